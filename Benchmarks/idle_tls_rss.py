"""Resident memory per idle WebSocket, plain and over TLS, with the Python `websockets` client.

    python3 Benchmarks/idle_tls_rss.py [N]        (default 3000 connections, rooms of 100)

Starts .build/release/stateroom-server (one shard) twice on 127.0.0.1 — plain, then with a
throwaway self-signed ECDSA pair — opens N idle connections to each, and prints the server's
RSS growth per connection. Bounded: N connections, 64 handshakes in flight, 2 s settle.
"""
import asyncio, os, re, ssl, subprocess, sys, tempfile
import websockets

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
SERVER = os.path.join(os.path.dirname(__file__), "..", ".build", "release", "stateroom-server")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])


async def fill(url, ctx, pid):
    base = rss_kib(pid)
    sem = asyncio.Semaphore(64)

    async def one(i):
        async with sem:
            return await websockets.connect(f"{url}/ws/r{i // 100}", ssl=ctx, server_hostname="localhost" if ctx else None,
                                            compression=None, ping_interval=None)

    conns = await asyncio.gather(*[one(i) for i in range(N)])
    await asyncio.sleep(2)
    after = rss_kib(pid)
    for c in conns:
        c.transport.abort()
    return base, after


def run(tls, tmp):
    cmd = [SERVER, "--host", "127.0.0.1", "--port", "0", "--shards", "1", "--no-pin", "--log-level", "warning"]
    ctx = None
    if tls:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", key, "-out", cert, "-days", "2"], check=True, capture_output=True)
        cmd += ["--tls-cert", cert, "--tls-key", key]
        ctx = ssl.create_default_context(cafile=cert)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode()
        port = int(re.search(r"https?://[^:\s]+:(\d+)", line).group(1))
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}"
        base, after = asyncio.run(fill(url, ctx, p.pid))
        print(f"{'tls  ' if tls else 'plain'}: {N} idle connections, RSS {base} -> {after} KiB, "
              f"{(after - base) * 1024 / N:.0f} B per connection")
    finally:
        p.terminate()
        p.wait(timeout=10)


with tempfile.TemporaryDirectory() as tmp:
    run(False, tmp)
    run(True, tmp)
