import NIOCore
import StrataNBDClient
import StrataNBDProtocol

/// What a fuzz target found wrong, in words fit for a crash report.
public struct FuzzFailure: Error, CustomStringConvertible, Sendable {
    public let description: String

    init(_ description: String) {
        self.description = description
    }
}

/// The client's side of a session, reduced to what decides how the server's next bytes
/// are framed: the project's own reply decoder (`NBDClientDecoder`) and the phase it
/// reads in, moved on by the server's messages the way `NBDClientHandler` moves it.
struct ClientView {
    let session: NBDClientSession
    var decoder: NBDClientDecoder
    private(set) var structuredReplies = false
    private(set) var extendedHeaders = false

    init(phase: NBDClientSession.Phase = .greeting) {
        session = NBDClientSession(phase)
        decoder = NBDClientDecoder(session: session)
    }

    var phase: NBDClientSession.Phase { session.phase }

    /// The client sent EXPORT_NAME: the next message is its reply, which has no header.
    func expectExportNameReply(noZeroes: Bool) {
        session.phase = .exportNameReply(noZeroes: noZeroes)
    }

    /// Moves to the phase that `message` leads to. An ACK to STRUCTURED_REPLY or
    /// EXTENDED_HEADERS sets the reply style; an ACK to GO, or the reply to EXPORT_NAME,
    /// starts transmission in that style; an ACK to ABORT ends the session.
    mutating func follow(_ message: NBDServerMessage) {
        switch message {
        case .greeting:
            session.phase = .options
        case .optionReply(let option, let type, _) where type == NBDOptionReply.ack.rawValue:
            switch NBDOption(rawValue: option) {
            case .structuredReply:
                structuredReplies = true
            case .extendedHeaders:
                structuredReplies = true
                extendedHeaders = true
            case .go:
                session.phase = .transmission(structuredReplies: structuredReplies, extendedHeaders: extendedHeaders)
            case .abort:
                session.phase = .closed
            default:
                break
            }
        case .exportNameReply:
            session.phase = .transmission(structuredReplies: structuredReplies, extendedHeaders: false)
        default:
            break
        }
    }
}
