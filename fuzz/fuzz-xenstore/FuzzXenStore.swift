// libFuzzer target: the xenstore wire decoder and the server state machine
// (XenStore/Wire.swift, XenStore/Core.swift): transactions, watches, permissions, quotas,
// introduce/release. The input is a byte stream of wire messages (xenstore.txt header +
// payload); each message goes to one of three connections chosen by its request id:
// dom0 (privileged), and two guests (domids 1 and 2), which dom0 may introduce.
// Checked: no crash, every reply and watch event fits the protocol's payload maximum.
import XenStore
import FuzzSupport

func fuzzXenStore(_ input: UnsafeBufferPointer<UInt8>) {
    let core = XenStoreCore()
    let connections = [core.connect(domid: 0), core.connect(domid: 1), core.connect(domid: 2)]
    var decoder = XenStoreMessageDecoder()
    decoder.feed(UnsafeRawBufferPointer(input))
    var handled = 0
    while handled < 512 {
        let message: XenStoreMessage
        do {
            guard let m = try decoder.next() else { break }
            message = m
        } catch {
            break   // an oversized header: the server drops that connection
        }
        handled += 1
        let from = connections[Int(message.requestID % 3)]
        for out in core.handle(message, from: from) {
            if out.message.payload.count > XenStoreLimits.payloadMax {
                fatalError("reply of \(out.message.payload.count) bytes to \(message.type)")
            }
        }
    }
    for c in connections { core.disconnect(c) }
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzXenStore) }
}
