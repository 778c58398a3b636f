// libFuzzer target: the split-virtqueue walker (Virtio/Virtqueue.swift) over a guest-memory
// image the input fills: descriptor table, avail ring, indirect tables and buffers are all
// guest-controlled (virtio 1.2 §2.7). Guest memory is two regions with a hole between them,
// so chains that cross or leave a region are reached. The first 4 input bytes choose the
// queue size (a power of two up to 256), the ring features and the avail cursor.
// Checked: every chain popped has at most `size` buffers, and every buffer slice lies inside
// guest memory (ASan reports any access outside the mapped regions).
import GuestMemory
import FuzzSupport
import Virtio

let regionSize: UInt64 = 0x8000
nonisolated(unsafe) let memory: GuestMemory = {
    do { return try GuestMemory.memfd(name: "fuzz-virtqueue", layout: [(0, regionSize), (0x10000, regionSize)]) }
    catch { fatalError("guest memory: \(error)") }
}()

func fuzzVirtqueue(_ input: UnsafeBufferPointer<UInt8>) {
    guard input.count >= 4 else { return }
    let queueSize = UInt16(1) << (input[0] % 9)          // 1...256: rings fit below 0x3000
    let features = (input[1] & 1 != 0 ? VirtioFeature.ringIndirectDesc : 0)
                 | (input[1] & 2 != 0 ? VirtioFeature.ringEventIdx : 0)
    let lastAvail = UInt16(input[2]) | UInt16(input[3]) << 8
    // The image: the rest of the input, first region then second; the remainder zeroed.
    let image = UnsafeBufferPointer(rebasing: input[4...])
    fill(memory, with: image)
    let queue: Virtqueue
    do {
        queue = try Virtqueue(memory: memory, size: queueSize, descTable: 0, availRing: 0x1000, usedRing: 0x2000,
                              features: features, lastAvailIdx: lastAvail)
    } catch { fatalError("the fixed ring layout was refused: \(error)") }
    var popped = 0
    while popped < 2 * Int(queueSize) {
        let chain: DescriptorChain
        do {
            guard let c = try queue.pop() else { break }
            chain = c
        } catch { break }   // a broken queue: the device stops serving it
        popped += 1
        guard chain.buffers.count <= Int(queueSize) else {
            fatalError("chain of \(chain.buffers.count) buffers in a queue of \(queueSize)")
        }
        var written: UInt32 = 0
        for b in chain.buffers {
            guard let s = try? memory.slice(b) else { continue }
            if b.writable, s.count > 0 { s[0] = 0xa5; s[s.count - 1] = 0x5a; written &+= UInt32(s.count) }
            else if s.count > 0 { _ = s[0] &+ s[s.count - 1] }
        }
        queue.addUsed(head: chain.head, length: written)
    }
    queue.publishUsed()
    _ = queue.needsNotification()
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzVirtqueue) }
}
