import Glibc
import StateroomServer

// poll-server [--port N] [--io auto|uring|epoll]: serves PollService in every room whose id starts
// with "poll-" (others are refused with 404 before they join), until SIGINT or SIGTERM.
var config = ServerConfiguration()
config.host = "127.0.0.1"
config.port = 8090
var args = CommandLine.arguments.dropFirst()
while let flag = args.popFirst() {
    switch (flag, args.popFirst()) {
    case ("--port", let v?): config.port = UInt16(v) ?? config.port
    case ("--io", let v?): config.io = ServerConfiguration.IOMode(rawValue: v) ?? .auto
    default:
        print("usage: poll-server [--port N] [--io auto|uring|epoll]")
        exit(2)
    }
}
config.upgradePolicy = UpgradePolicyClosure { request in
    request.roomId.hasPrefix("poll-") ? .accept : .refuse(.notFound)
}

let signals = StopSignals()   // before start: the shard threads inherit the blocked signals
let server = Server(configuration: config)
try server.start(factory: ServiceFactory { _ in PollService() })
print("poll-server listening on http://\(config.host):\(server.port)")
fflush(nil)
signals.wait()
server.stop()
