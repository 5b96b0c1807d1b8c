import Glibc
import StrataFuzz

// The NBD server fuzz target (NBDFuzzTarget.server): a libFuzzer binary when built with
// the fuzzer flags, an input replayer otherwise (FuzzMain).
exit(FuzzMain.main(.server))
