import WasmKit

// MARK: - Capture and restore (guest memory read and written in place)

extension GuestInstance {
    /// Captures this instance: memory image (non-zero pages only, read in place), exported
    /// mutable globals and the event buffer. Only between callbacks.
    func snapshot(layout: SnapshotLayout, roomId: String) throws(WasmSnapshotError) -> WasmSnapshot {
        guard state.sink == nil else { throw .insideCallback(roomId: roomId) }
        var globals: [WasmSnapshot.Global] = []
        globals.reserveCapacity(layout.mutableGlobals.count)
        for (name, type) in layout.mutableGlobals {
            guard let global = instance.exports[global: name], let value = WasmGlobalValue(global.value) else {
                throw .unsupportedGlobal(name: name, type: type.name)
            }
            globals.append(WasmSnapshot.Global(name: name, value: value))
        }
        return WasmSnapshot(
            formatVersion: WasmSnapshot.currentFormatVersion,
            moduleHash: layout.moduleHash,
            memory: try captureMemory(),
            globals: globals,
            eventBuffer: WasmSnapshot.EventBuffer(pointer: bufferPointer, capacity: bufferCapacity)
        )
    }

    /// The memory image: one pass finds the non-zero pages, one copy takes them.
    private func captureMemory() throws(WasmSnapshotError) -> WasmSnapshot.MemoryImage {
        let pageSize = WasmSnapshot.pageSize
        let byteCount = memory.byteCount
        guard byteCount % pageSize == 0 else { throw .unsupportedMemory(byteCount: byteCount) }
        let pageCount = byteCount / pageSize
        // WasmKit stops the process on a zero-length access of an empty memory (no base address).
        guard byteCount > 0 else { return .init(pageCount: 0, storedPages: [], bytes: []) }
        return memory.withUnsafeBufferPointer(offset: 0, count: byteCount) { all in
            var stored: [UInt32] = []
            for page in 0..<pageCount where !Self.isZero(UnsafeRawBufferPointer(rebasing: all[page * pageSize..<(page + 1) * pageSize])) {
                stored.append(UInt32(page))
            }
            let bytes = [UInt8](unsafeUninitializedCapacity: stored.count * pageSize) { buffer, initialized in
                let out = UnsafeMutableRawBufferPointer(buffer)
                for (slot, page) in stored.enumerated() {
                    let start = Int(page) * pageSize
                    UnsafeMutableRawBufferPointer(rebasing: out[slot * pageSize..<(slot + 1) * pageSize])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: all[start..<start + pageSize]))
                }
                initialized = stored.count * pageSize
            }
            return .init(pageCount: pageCount, storedPages: stored, bytes: bytes)
        }
    }

    /// Makes this fresh instance the snapshot's room: grows memory to the image's size through
    /// `memory.grow` (so the cap and the module's maximum hold), writes the stored pages and
    /// zeroes every other page that is not zero already (a page never touched stays uncommitted),
    /// assigns the exported mutable globals and adopts the event buffer. A fresh memory already
    /// larger than the image keeps its size, zero past the image (memory never shrinks).
    /// `layout.check` has accepted the snapshot. Delivers nothing: the room's state is already
    /// initialized.
    func restore(_ snapshot: WasmSnapshot, grower: Module) throws(WasmSnapshotError) {
        let pageSize = WasmSnapshot.pageSize
        let image = snapshot.memory
        let havePages = memory.byteCount / pageSize
        if image.pageCount > havePages {
            try grow(by: image.pageCount - havePages, grower: grower)
        }
        let byteCount = memory.byteCount
        guard byteCount % pageSize == 0 else { throw .unsupportedMemory(byteCount: byteCount) }
        if byteCount > 0 {
            image.bytes.withUnsafeBytes { source in
                memory.withUnsafeMutableBufferPointer(offset: 0, count: byteCount) { all in
                    var slot = 0
                    for page in 0..<byteCount / pageSize {
                        let target = UnsafeMutableRawBufferPointer(rebasing: all[page * pageSize..<(page + 1) * pageSize])
                        if slot < image.storedPages.count, image.storedPages[slot] == UInt32(page) {
                            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[slot * pageSize..<(slot + 1) * pageSize]))
                            slot += 1
                        } else if !Self.isZero(UnsafeRawBufferPointer(target)) {
                            target.initializeMemory(as: UInt8.self, repeating: 0)
                        }
                    }
                }
            }
        }
        for global in snapshot.globals {
            guard let target = instance.exports[global: global.name] else {
                throw .globalMismatch(name: global.name, reason: "the instance does not export it")
            }
            do {
                try target.assign(global.value.wasmValue)
            } catch {
                throw .globalMismatch(name: global.name, reason: "\(error)")
            }
        }
        adoptEventBuffer(pointer: snapshot.eventBuffer.pointer, capacity: snapshot.eventBuffer.capacity)
    }

    /// `memory.grow(pages)` from a ``MemoryGrower`` instance in this instance's store, under the
    /// callback budget.
    private func grow(by pages: Int, grower: Module) throws(WasmSnapshotError) {
        let from = memory.byteCount / WasmSnapshot.pageSize
        func refused(_ reason: String) -> WasmSnapshotError {
            .memoryGrowthRefused(fromPages: from, toPages: from + pages, reason: reason)
        }
        store.fuel = Fuel(remaining: fuel)
        let results: [Value]
        do {
            let imports: Imports = ["env": ["memory": memory]]
            let instance = try grower.instantiate(store: store, imports: imports)
            guard let grow = instance.exports[function: "grow"] else { throw refused("the grower lacks `grow`") }
            results = try grow.invoke([.i32(UInt32(pages))])
        } catch let error as WasmSnapshotError {
            throw error
        } catch {
            throw refused("\(error)")
        }
        guard results == [.i32(UInt32(from))] else {
            throw refused("memory.grow returned -1 (the module's maximum or the memory cap)")
        }
    }

    /// Whether every byte of `bytes` is zero, eight at a time.
    static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset + 64 <= bytes.count {
            var any: UInt64 = 0
            for word in 0..<8 { any |= bytes.loadUnaligned(fromByteOffset: offset + word * 8, as: UInt64.self) }
            if any != 0 { return false }
            offset += 64
        }
        while offset < bytes.count {
            if bytes[offset] != 0 { return false }
            offset += 1
        }
        return true
    }
}

