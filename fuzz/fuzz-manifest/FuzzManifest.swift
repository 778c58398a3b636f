// libFuzzer target: the sandbox manifest parser (Sandbox/ManifestParser.swift). Manifests
// are the host's own files, but a bad one must still be refused with a ManifestError naming
// the line, never crash the service that loads it. `include` lines resolve to a second,
// fixed manifest, so include handling and its depth limit are reached too.
import Sandbox
import FuzzSupport

func fuzzManifest(_ input: UnsafeBufferPointer<UInt8>) {
    let text = String(decoding: input, as: UTF8.self)
    _ = try? Manifest.parse(text: text, file: "fuzz.manifest") { (name, _) throws(ManifestError) in
        // An include of the fuzzed text itself exercises the nesting limit.
        (path: "include/\(name)", text: name == "self" ? text : "allow read write close\n")
    }
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzManifest) }
}
