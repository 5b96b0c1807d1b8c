import StrataNBDProtocol

/// Why an `NBDClient` call failed.
public enum NBDClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server refused an option of the handshake. `reply` is the option reply type
    /// (an `NBDOptionReply` error, bit 31 set) and `message` the text the server sent
    /// with it, which is meant for people.
    case optionRefused(option: UInt32, reply: UInt32, message: String)
    /// The server answered a request with an error. `error` is the NBD errno
    /// (`NBDError`: 1 EPERM, 5 EIO, 22 EINVAL, 28 ENOSPC, ...); `message` is the text of
    /// an error chunk, when the server sent one (simple replies carry none).
    case request(error: UInt32, message: String?)
    /// The server sent something the protocol does not allow. The client hangs up
    /// after this (a hard disconnect, as the spec asks), except when only one reply was
    /// inconsistent and the stream is still in step.
    case protocolViolation(String)
    /// The connection is gone (closed by the server, by `disconnect()`, or by an I/O
    /// error), so the request can never be answered.
    case connectionClosed(reason: String)
    /// The export does not offer what the call needs (TRIM, FUA, block status, ...),
    /// so the request was not sent.
    case unsupported(String)
    /// The request breaks a rule the client can check itself (a length that does not fit
    /// the header, a payload over the maximum), so it was not sent.
    case invalidRequest(String)
    /// The handshake did not finish in time.
    case timedOut(String)

    public var description: String {
        switch self {
        case .optionRefused(let option, let reply, let message):
            let text = message.isEmpty ? "" : ": \(message)"
            return "server refused \(NBDClientError.optionName(option)) with \(NBDClientError.replyName(reply))\(text)"
        case .request(let error, let message):
            let text = message.map { $0.isEmpty ? "" : ": \($0)" } ?? ""
            return "request failed with \(NBDClientError.errnoName(error))\(text)"
        case .protocolViolation(let reason):
            return "protocol violation by the server: \(reason)"
        case .connectionClosed(let reason):
            return "connection closed: \(reason)"
        case .unsupported(let what):
            return "not supported by the export: \(what)"
        case .invalidRequest(let reason):
            return "invalid request: \(reason)"
        case .timedOut(let what):
            return "timed out: \(what)"
        }
    }

    static func optionName(_ option: UInt32) -> String {
        switch NBDOption(rawValue: option) {
        case .exportName: "NBD_OPT_EXPORT_NAME"
        case .abort: "NBD_OPT_ABORT"
        case .list: "NBD_OPT_LIST"
        case .startTLS: "NBD_OPT_STARTTLS"
        case .info: "NBD_OPT_INFO"
        case .go: "NBD_OPT_GO"
        case .structuredReply: "NBD_OPT_STRUCTURED_REPLY"
        case .listMetaContext: "NBD_OPT_LIST_META_CONTEXT"
        case .setMetaContext: "NBD_OPT_SET_META_CONTEXT"
        case .extendedHeaders: "NBD_OPT_EXTENDED_HEADERS"
        case nil: "option \(option)"
        }
    }

    static func replyName(_ reply: UInt32) -> String {
        switch NBDOptionReply(rawValue: reply) {
        case .ack: "NBD_REP_ACK"
        case .server: "NBD_REP_SERVER"
        case .info: "NBD_REP_INFO"
        case .metaContext: "NBD_REP_META_CONTEXT"
        case .errorUnsupported: "NBD_REP_ERR_UNSUP"
        case .errorPolicy: "NBD_REP_ERR_POLICY"
        case .errorInvalid: "NBD_REP_ERR_INVALID"
        case .errorPlatform: "NBD_REP_ERR_PLATFORM"
        case .errorTLSRequired: "NBD_REP_ERR_TLS_REQD"
        case .errorUnknown: "NBD_REP_ERR_UNKNOWN"
        case .errorShutdown: "NBD_REP_ERR_SHUTDOWN"
        case .errorBlockSizeRequired: "NBD_REP_ERR_BLOCK_SIZE_REQD"
        case .errorTooBig: "NBD_REP_ERR_TOO_BIG"
        case .errorExtendedHeaderRequired: "NBD_REP_ERR_EXT_HEADER_REQD"
        case nil: "reply 0x\(String(reply, radix: 16))"
        }
    }

    static func errnoName(_ error: UInt32) -> String {
        switch NBDError(rawValue: error) {
        case .permission: "EPERM"
        case .io: "EIO"
        case .noMemory: "ENOMEM"
        case .invalid: "EINVAL"
        case .noSpace: "ENOSPC"
        case .overflow: "EOVERFLOW"
        case .notSupported: "ENOTSUP"
        case .shutdown: "ESHUTDOWN"
        case nil: "error \(error)"
        }
    }
}
