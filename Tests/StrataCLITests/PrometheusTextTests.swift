import StrataControl
import Testing

/// Label values reach `/metrics` from configuration files, so anything a name may hold
/// must come out as one well-formed label value.
struct PrometheusTextTests {
    @Test func labelValuesEscapeBackslashQuoteAndNewline() {
        #expect(PrometheusText.label("vol") == "vol")
        #expect(PrometheusText.label(#"we"ird"#) == #"we\"ird"#)
        #expect(PrometheusText.label(#"a\b"#) == #"a\\b"#)
        #expect(PrometheusText.label("two\nlines") == #"two\nlines"#)
        #expect(PrometheusText.label("é/ü") == "é/ü")
    }
}
