#!/usr/bin/env python3
"""The uWebSockets peer for stateroom-bench: a room relay on socketify (uWebSockets' Python binding).

Same protocol as `stateroom-server --service relay`: a client joins room R with `GET /ws/R` (`/ws` is
room "1"); every message is published to everyone in the room, the sender included. uWebSockets is
single-threaded, so compare it with `stateroom-server --shards 1`, both pinned to one core.

    pip install socketify          # needs Debian's libuv1 (apt-get install libuv1)
    taskset -c 0 python3 Benchmarks/socketify_relay.py --port 9001
    taskset -c 0 python3 Benchmarks/socketify_relay.py --port 9443 --tls-cert cert.pem --tls-key key.pem

With `--tls-cert`/`--tls-key` (the flags of `stateroom-server`) it serves wss through uWebSockets' SSL
app (OpenSSL underneath, as ours). Prints `listening on http://127.0.0.1:PORT` (`https://` with TLS)
when ready, as `stateroom-server` does.

With `--compression` it agrees to permessage-deflate (RFC 7692) with `CompressOptions.SHARED_COMPRESSOR`:
one deflate stream per event loop, no context takeover either way (it answers
`permessage-deflate; client_no_context_takeover; server_no_context_takeover`), and every published
message is sent compressed to each subscriber that agreed (uWebSockets deflates it once per
recipient); clients that did not offer the extension get it plain.

    taskset -c 0 python3 Benchmarks/socketify_relay.py --port 9001 --compression
"""

import argparse
import sys

from socketify import App, AppOptions, CompressOptions, OpCode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--max-payload", type=int, default=16 << 20, help="largest message (bytes)")
    ap.add_argument("--max-backpressure", type=int, default=4 << 20, help="queued bytes per socket")
    ap.add_argument("--tls-cert", help="PEM certificate (chain): serve wss (needs --tls-key)")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--compression", action="store_true",
                    help="agree to permessage-deflate (CompressOptions.SHARED_COMPRESSOR) and publish compressed")
    args = ap.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")

    tls = bool(args.tls_cert)
    app = App(AppOptions(key_file_name=args.tls_key, cert_file_name=args.tls_cert)) if tls else App()

    # publish(..., compress=True) deflates the message for each subscriber that agreed to
    # permessage-deflate (and sends it plain to the others); without --compression nobody agreed.
    compress = args.compression

    def upgrade(res, req, socket_context):
        # Keep the room from the URL as the socket's user data, as stateroom-server routes /ws/<room>.
        url = req.get_url()
        room = url[len("/ws/"):] if url.startswith("/ws/") else "1"
        res.upgrade(
            req.get_header("sec-websocket-key"),
            req.get_header("sec-websocket-protocol"),
            req.get_header("sec-websocket-extensions"),
            socket_context,
            room,
        )

    def on_open(ws):
        ws.subscribe(ws.get_user_data())

    def on_message(ws, message, opcode):
        # publish() from a socket skips the publisher; app.publish() reaches every subscriber,
        # sender included, like the relay service.
        app.publish(ws.get_user_data(), message, opcode, compress)

    app.ws(
        "/*",
        {
            "compression": CompressOptions.SHARED_COMPRESSOR if args.compression else CompressOptions.DISABLED,
            "max_payload_length": args.max_payload,
            "max_backpressure": args.max_backpressure,
            "idle_timeout": 0,
            "upgrade": upgrade,
            "open": on_open,
            "message": on_message,
        },
    )
    app.any("/status", lambda res, req: res.end("ok"))

    def ready(config):
        print(f"listening on {'https' if tls else 'http'}://{args.host}:{config.port}", flush=True)

    app.listen({"port": args.port, "host": args.host}, ready)
    app.run()


if __name__ == "__main__":
    sys.exit(main())
