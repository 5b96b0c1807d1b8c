import NIOCore
import NIOSSL
import NIOTLS
import StrataNBDProtocol

/// Where TLS stands on one connection.
enum ConnectionTLS {
    case plain
    /// STARTTLS was answered; TLS goes in once the input that carried it is handled.
    case starting
    /// The handshake is under way.
    case handshaking(NIOSSLServerHandler, NBDTLSPeer)
    /// Up, with the name the client proved, if any (`NBDExport.tlsAllow`).
    case established(name: String?)

    var isUp: Bool {
        if case .established = self { return true }
        return false
    }
}

extension NBDConnectionHandler {
    /// Answers STARTTLS, then stops decoding: what follows must come through TLS.
    func startTLS(code: UInt32, data: ByteBuffer) {
        guard data.readableBytes == 0 else { return reject(option: code, .errorInvalid, "STARTTLS takes no data") }
        guard core.tlsMode != .off else { return reject(option: code, .errorUnsupported, "TLS is not configured on this server") }
        guard case .plain = tls else { return reject(option: code, .errorInvalid, "TLS is already started") }
        sendOptionReply(code, .ack)
        context?.flush()
        tls = .starting
        session.paused = true
    }

    /// Puts TLS between the socket and this handler, after STARTTLS's answer went out
    /// in the clear.
    func beginTLS() {
        guard input.heldBytes == 0 else {
            // Sent before the answer, so not encrypted, yet it would be read as if it had
            // come through TLS: an attacker's way to inject options.
            return violation("data after STARTTLS, before the TLS handshake")
        }
        guard let context, let credentials = core.tls else { return close(.now) }
        do {
            let (handler, peer) = try credentials.makeHandler()
            try context.pipeline.syncOperations.addHandler(handler, position: .first)
            tls = .handshaking(handler, peer)
            session.paused = false
        } catch {
            logger.warning("cannot start TLS; closing", metadata: ["error": "\(error)"])
            close(.now)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, case .handshaking(let handler, let peer) = tls {
            let name = peer.name(handler: handler)
            tls = .established(name: name)
            logger[metadataKey: "tls-client"] = "\(name ?? "-")"
            logger.info("TLS established")
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Why this client may not open or see `served`, as the option reply that says so;
    /// nil when it may.
    func refusal(of served: ServedExport) -> (reply: NBDOptionReply, message: String)? {
        let allowed = served.export.tlsAllow
        guard !allowed.isEmpty else { return nil }
        guard case .established(let name) = tls else {
            return (.errorTLSRequired, "export '\(served.export.name)' is served over TLS only")
        }
        guard let name, allowed.contains(name) else {
            return (.errorPolicy, "export '\(served.export.name)' is not open to \(name.map { "'\($0)'" } ?? "a client without a verified name")")
        }
        return nil
    }
}
