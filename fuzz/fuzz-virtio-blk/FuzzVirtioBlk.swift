// libFuzzer target: virtio-blk request handling (BlockBackend/VirtioBlock.swift, virtio 1.2
// §5.2.6) on chains the walker takes from a guest-memory image the input fills, against a
// 1 MiB image file (a memfd). Request headers, sector numbers, segment lists of discard and
// write-zeroes, GET_ID and flush are all guest-controlled. The first 2 input bytes choose
// the ring features and whether the image is read-only; the rest fills guest memory (two
// 32 KiB regions with a hole between them). A request the device refuses is answered in
// its status byte; only a chain with no status byte may mark the queue broken.
import BlockBackend
import FuzzSupport
import CLinux
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

let regionSize: UInt64 = 0x8000
nonisolated(unsafe) let memory: GuestMemory = {
    do { return try GuestMemory.memfd(name: "fuzz-blk", layout: [(0, regionSize), (0x10000, regionSize)]) }
    catch { fatalError("guest memory: \(error)") }
}()

func makeDevice(readOnly: Bool) -> VirtioBlockDevice {
    let fd = clinux_memfd_create("fuzz-blk-image", CLINUX_MFD_CLOEXEC)
    precondition(fd >= 0 && ftruncate(fd, 1 << 20) == 0, "image memfd")
    do { return VirtioBlockDevice(image: try BlockImage(fd: fd, readOnly: readOnly)) }
    catch { fatalError("image: \(error)") }
}
nonisolated(unsafe) let writable = makeDevice(readOnly: false)
nonisolated(unsafe) let readOnly = makeDevice(readOnly: true)

func fuzzVirtioBlk(_ input: UnsafeBufferPointer<UInt8>) {
    guard input.count >= 2 else { return }
    let features = (input[0] & 1 != 0 ? VirtioFeature.ringIndirectDesc : 0)
                 | (input[0] & 2 != 0 ? VirtioFeature.ringEventIdx : 0)
                 | VirtioBlk.fFlush | VirtioBlk.fDiscard | VirtioBlk.fWriteZeroes
    let device = input[1] & 1 != 0 ? readOnly : writable
    device.setNegotiatedFeatures(features)
    let image = UnsafeBufferPointer(rebasing: input[2...])
    fill(memory, with: image)
    let queue: Virtqueue
    do {
        queue = try Virtqueue(memory: memory, size: 64, descTable: 0, availRing: 0x1000, usedRing: 0x2000, features: features)
    } catch { fatalError("the fixed ring layout was refused: \(error)") }
    for _ in 0..<128 {
        let chain: DescriptorChain
        do {
            guard let c = try queue.pop() else { break }
            chain = c
        } catch { break }
        do {
            let written = try device.handle(chain, queue: 0, memory: memory)
            if UInt64(written) > chain.writableLength {
                fatalError("used length \(written) exceeds the chain's \(chain.writableLength) writable bytes")
            }
            queue.addUsed(head: chain.head, length: written)
        } catch {
            break   // the queue is marked broken (DEVICE_NEEDS_RESET)
        }
    }
    queue.publishUsed()
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzVirtioBlk) }
}
