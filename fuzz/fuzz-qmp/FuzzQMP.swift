// libFuzzer target: the QMP reply decoder (QemuEngine/QMPClient.swift, QMPMessage): the
// greeting, replies, errors and events QEMU sends, one JSON object per line, and the typed
// views of the replies xend uses (query-status, query-cpus-fast, query-balloon). QEMU runs
// the guest, so a compromised QEMU controls these bytes: whatever they are, decoding
// returns a value or nil and never traps.
import Foundation
import FuzzSupport
import QemuEngine

func fuzzQMP(_ input: UnsafeBufferPointer<UInt8>) {
    let bytes = Data(buffer: input)
    var lines = bytes.split(separator: 10, omittingEmptySubsequences: true).prefix(64)
    if let first = lines.first {
        _ = QMPMessage.greetingVersion(Data(first))
        lines = lines.dropFirst()
    }
    for line in lines {
        switch QMPMessage.decode(Data(line)) {
        case .reply(_, .success(let value)):
            _ = QMPMessage.status(value)
            _ = QMPMessage.cpus(value)
            _ = QMPMessage.balloonActual(value)
        case .event(let event):
            _ = event.reason
        default:
            break
        }
    }
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzQMP) }
}
