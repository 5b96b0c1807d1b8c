import NIOCore
import Strata
import StrataNBDProtocol

/// A LIST_META_CONTEXT or SET_META_CONTEXT, parsed: which export it asks about and what.
struct MetaContextQuery {
    let option: UInt32
    /// SET_META_CONTEXT, which selects; LIST_META_CONTEXT only lists.
    let selects: Bool
    let export: ServedExport
    let queries: [String]
}

extension NBDConnectionHandler {
    // MARK: Metadata contexts

    /// LIST_META_CONTEXT and SET_META_CONTEXT: checked and parsed here, answered once the
    /// export's contexts are known. Only queries in the `qemu` namespace, or a LIST of
    /// everything, need its provider's dirty bitmaps, which cost a GETATTR.
    func metaContext(code: UInt32, data: ByteBuffer, set: Bool) {
        if set {
            // Each SET replaces the selection, even one that fails.
            metaContexts = []
            metaContextExport = nil
        }
        guard structuredReplies else {
            return reject(option: code, .errorInvalid, "negotiate structured replies first")
        }
        var data = data
        guard let nameLength = data.readInteger(as: UInt32.self), Int(nameLength) <= data.readableBytes,
              let name = data.readString(length: Int(nameLength)),
              let count = data.readInteger(as: UInt32.self) else {
            return reject(option: code, .errorInvalid, "malformed meta context request")
        }
        // The count is the client's word: each query takes at least its 4-byte length, and
        // the option's data is at most `NBDLimits.maximumOptionLength`.
        var queries: [String] = []
        for _ in 0..<count {
            guard let length = data.readInteger(as: UInt32.self), Int(length) <= data.readableBytes,
                  let query = data.readString(length: Int(length)) else {
                return reject(option: code, .errorInvalid, "malformed meta context query")
            }
            queries.append(query)
        }
        guard data.readableBytes == 0 else { return reject(option: code, .errorInvalid, "trailing bytes in meta context request") }
        guard let served = core.export(named: name) else {
            return reject(option: code, .errorUnknown, "no export named '\(name)'")
        }
        if let refusal = refusal(of: served) { return reject(option: code, refusal.reply, refusal.message) }
        let query = MetaContextQuery(option: code, selects: set, export: served, queries: queries)
        guard MetaContextCatalog.needsBitmaps(queries, listing: !set) else {
            return answer(query, from: MetaContextCatalog())
        }
        listDirtyBitmaps(for: query)
    }

    /// Asks the export's provider which dirty bitmaps it keeps, then answers `query`. A
    /// provider that answers later, from another thread, has the handshake wait for it: no
    /// further option is decoded, nor the socket read, until it has, so that the replies
    /// keep the order of the options.
    private func listDirtyBitmaps(for query: MetaContextQuery) {
        let consumer: Consumer
        do {
            consumer = try openConsumer(of: query.export, writing: false)
        } catch {
            // GO says why the export cannot be opened; until it can, it offers no bitmaps.
            logger.info("cannot ask the export for its dirty bitmaps",
                        metadata: ["export": "\(query.export.export.name)", "error": "\(error)"])
            return answer(query, from: MetaContextCatalog())
        }
        let names = DirtyBitmapListing().ask(on: consumer) { [self] names in
            eventLoop.execute { self.dirtyBitmapsListed(names, consumer: consumer) }
        }
        if let names {
            giveBack(consumer)
            return answer(query, from: MetaContextCatalog(bitmaps: names))
        }
        awaitedMetaContext = query
        pauseReading()
    }

    /// The provider listed its bitmaps from another thread: the option that waited is
    /// answered, and options are read again.
    private func dirtyBitmapsListed(_ names: [String], consumer: Consumer) {
        giveBack(consumer)
        guard let query = awaitedMetaContext.take(), lifecycle.channelIsOpen, session.phase == .options else { return }
        // Flushed once, with the replies to any options that waited behind it.
        flushing.completionsBegan()
        answer(query, from: MetaContextCatalog(bitmaps: names))
        updateReading()
        if flushing.completionsEnded() { flushReplies() }
    }

    /// Answers a LIST with the contexts its queries name, or selects those a SET's name.
    private func answer(_ query: MetaContextQuery, from catalog: MetaContextCatalog) {
        let code = query.option
        guard query.selects else {
            // A LIST's ids mean nothing: the spec asks for zero.
            for name in catalog.listed(by: query.queries) { sendMetaContextReply(code, id: 0, name: name) }
            return sendOptionReply(code, .ack)
        }
        let selected = catalog.selected(by: query.queries)
        guard selected.count <= NBDLimits.maximumMetaContexts else {
            return reject(option: code, .errorTooBig,
                          "\(selected.count) metadata contexts selected; at most \(NBDLimits.maximumMetaContexts) are served")
        }
        metaContexts = selected
        metaContextExport = query.export
        for context in selected { sendMetaContextReply(code, id: context.id, name: context.name) }
        sendOptionReply(code, .ack)
    }

    private func sendMetaContextReply(_ option: UInt32, id: UInt32, name: String) {
        let bytes = Array(name.utf8)
        sendOptionReply(option, .metaContext) {
            $0.writeInteger(id)
            $0.writeBytes(bytes)
        }
    }
}
