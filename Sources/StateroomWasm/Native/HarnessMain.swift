// `stateroom build --native` compiles this file with a service's sources (and Script/) against a
// native module Stateroom: the same source as the wasm module, run natively on a script.
//   dist/<name>-native SCRIPT                 -> the transcript
//   dist/<name>-native --bench TEXT [SCRIPT]  -> the median time of one message
import Stateroom
#if canImport(Glibc)
import Glibc
#endif

@main
enum StateroomNativeHarness {
    static func main() {
        let status = stateroomScriptMain(arguments: Array(CommandLine.arguments.dropFirst()), name: "native") {
            StateroomMain()
        }
        if status != 0 { exit(status) }
    }
}
