"""Smoke test of stateroom-bench against a spawned relay server: a short run of a few hundred
messages, its JSON report and its loss/order checks. Correctness only: no timing assertions.

The bench binary is ``STATEROOM_BENCH`` or ``<repo>/.build/release/stateroom-bench``, built here with
``swift build -c release --product stateroom-bench`` when it is not given (a no-op when up to date).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

RUN_TIMEOUT = 120


@pytest.fixture(scope="module")
def bench_binary() -> Path:
    given = os.environ.get("STATEROOM_BENCH")
    if given:
        p = Path(given)
        p = p if p.is_absolute() else REPO_ROOT / p
        if not p.exists():
            pytest.skip(f"STATEROOM_BENCH={given} does not exist")
        return p
    build = subprocess.run(["swift", "build", "-c", "release", "--product", "stateroom-bench"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"building stateroom-bench failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    return REPO_ROOT / ".build" / "release" / "stateroom-bench"


def run_bench(binary: Path, *args: str) -> tuple[int, dict, str]:
    proc = subprocess.run([str(binary), "--json", "--quiet", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"bench printed no JSON (exit {proc.returncode})\nstdout:\n{proc.stdout[-4000:]}\n"
                    f"stderr:\n{proc.stderr[-4000:]}")
    return proc.returncode, report, proc.stderr


REQUIRED_FIELDS = [
    "connectionsRequested", "connectionsEstablished", "connectionsFailed", "connectRate",
    "messagesSent", "deliveriesExpected", "deliveriesReceived", "deliveriesPerSecond",
    "lost", "gaps", "reordered", "latency", "benchCPUSeconds", "benchSaturated", "passed", "failures", "scenario",
]


def check_clean(report: dict, rooms: int, clients: int) -> None:
    for field in REQUIRED_FIELDS:
        assert field in report, f"JSON report lacks {field!r}: {sorted(report)}"
    for p in ("p50Micros", "p90Micros", "p99Micros", "p999Micros", "maxMicros"):
        assert p in report["latency"], report["latency"]
    assert report["connectionsEstablished"] == rooms * clients, report
    assert report["connectionsFailed"] == 0, report
    assert report["messagesSent"] > 0, report
    # a relay delivers every message to every member of its room, sender included
    assert report["deliveriesExpected"] == report["messagesSent"] * clients, report
    assert report["deliveriesReceived"] == report["deliveriesExpected"], report
    assert report["lost"] == 0 and report["gaps"] == 0 and report["reordered"] == 0, report
    assert report["latency"]["count"] > 0, report["latency"]
    assert report["passed"] is True and report["failures"] == [], report["failures"]


def test_open_loop_relay_no_loss(server_factory, bench_binary, tmp_path):
    srv = server_factory(service="relay", shards=2)
    chart = tmp_path / "latency.svg"
    # 2 rooms x 2 senders x 100 msgs/s x ~1.3 s: a few hundred messages, ~2,500 deliveries
    rc, report, err = run_bench(bench_binary, "--url", f"ws://127.0.0.1:{srv.port}",
                                "--rooms", "2", "--clients-per-room", "5", "--senders", "2",
                                "--rate", "100", "--warmup", "0.3", "--duration", "1",
                                "--server-pid", str(srv.proc.pid), "--chart", str(chart))
    assert rc == 0, f"bench failed (exit {rc}): {report.get('failures')}\n{err[-2000:]}"
    check_clean(report, rooms=2, clients=5)
    assert report["scenario"]["rate"] == 100
    # with a server pid the report has the server's CPU (absent otherwise)
    assert report["serverCPUSeconds"] >= 0
    assert report["serverCPUSecondsPerMillionDeliveries"] >= 0
    assert 250 <= report["messagesSent"] <= 800, report["messagesSent"]
    # open loop: how late the bench's own sends left is reported (one sample per send in the window)
    lag = report["senderLag"]
    assert 0 < lag["count"] <= report["messagesSent"], lag
    assert 0 <= lag["p50Micros"] <= lag["p99Micros"] <= lag["maxMicros"], lag
    svg = chart.read_text()
    assert svg.startswith("<svg") and "<polyline" in svg
    srv.assert_alive()


def test_closed_loop_relay_no_loss(server_factory, bench_binary):
    srv = server_factory(service="relay")
    rc, report, err = run_bench(bench_binary, "--url", f"ws://127.0.0.1:{srv.port}",
                                "--rooms", "3", "--clients-per-room", "4", "--senders", "1",
                                "--closed-loop", "--warmup", "0.2", "--duration", "0.5",
                                "--size", "1000")
    assert rc == 0, f"bench failed (exit {rc}): {report.get('failures')}\n{err[-2000:]}"
    check_clean(report, rooms=3, clients=4)
    assert report["scenario"]["size"] == 1000
    # closed loop has no schedule to be late against
    assert report.get("senderLag") is None, report.get("senderLag")
    srv.assert_alive()


def test_loss_fails_the_run(server_factory, bench_binary):
    # the counter service ignores these messages: every delivery is lost, and the bench must say so
    srv = server_factory(service="counter")
    rc, report, _ = run_bench(bench_binary, "--url", f"ws://127.0.0.1:{srv.port}",
                              "--rooms", "1", "--clients-per-room", "3", "--rate", "50",
                              "--warmup", "0", "--duration", "0.5", "--drain-timeout", "0.5")
    assert rc == 1, report
    assert report["passed"] is False
    assert report["lost"] == report["deliveriesExpected"] > 0, report
    assert any("lost" in f for f in report["failures"]), report["failures"]


def test_server_pid_of_no_process_is_refused(bench_binary):
    proc = subprocess.run([str(bench_binary), "--server-pid", str(2**22 + 1), "--rooms", "1",
                           "--clients-per-room", "1", "--duration", "0.1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode != 0
    assert "no such process" in proc.stderr, proc.stderr[-2000:]


def test_a_server_pid_that_is_not_the_server_is_flagged(server_factory, bench_binary):
    """A PID charged no CPU while a million deliveries went through is a wrapper, not the
    server (e.g. the shell of `cd dir && server &`): the report says so. The real PID is not."""
    srv = server_factory(service="relay", shards=1)
    load = ["--url", f"ws://127.0.0.1:{srv.port}", "--rooms", "1", "--clients-per-room", "300",
            "--senders", "8", "--closed-loop", "--warmup", "0.3", "--duration", "2"]
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        rc, report, err = run_bench(bench_binary, *load, "--server-pid", str(bystander.pid))
    finally:
        bystander.kill()
        bystander.wait()
    assert rc == 0, f"{report.get('failures')}\n{err[-2000:]}"
    in_window = report["deliveriesPerSecond"] * report["windowSeconds"]
    assert in_window >= 200_000, f"{in_window:.0f} deliveries in the window: too few for the check to apply"
    assert report["serverCPUSeconds"] == 0 and report["serverLooksIdle"] is True, report

    rc, report, err = run_bench(bench_binary, *load, "--server-pid", str(srv.proc.pid))
    assert rc == 0, f"{report.get('failures')}\n{err[-2000:]}"
    assert report["serverCPUSeconds"] > 0 and report["serverLooksIdle"] is False, report
    srv.assert_alive()


def test_spawn_reads_server_cpu(bench_binary):
    binary = REPO_ROOT / ".build" / "release" / "stateroom-server"
    if not binary.exists():
        pytest.skip("server binary not built")
    rc, report, err = run_bench(bench_binary, "--spawn",
                                f"{binary} --host 127.0.0.1 --port {{port}} --service relay --shards 1",
                                "--rooms", "1", "--clients-per-room", "10", "--closed-loop",
                                "--warmup", "0.2", "--duration", "0.5")
    assert rc == 0, f"{report.get('failures')}\n{err[-2000:]}"
    check_clean(report, rooms=1, clients=10)
    assert report["serverPid"] and report["serverCPUSeconds"] >= 0
    # The server may run where the bench runs: ksoftirqd time cannot be attributed.
    assert report.get("serverSoftirqCPUSeconds") is None, report


def test_pinned_server_is_charged_for_softirq_on_its_core(bench_binary):
    """Server on CPU 0, bench on the others: ksoftirqd/0's time counts as the server's."""
    binary = REPO_ROOT / ".build" / "release" / "stateroom-server"
    if not binary.exists():
        pytest.skip("server binary not built")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or 0 not in cpus:
        pytest.skip("needs CPU 0 and another CPU")
    others = ",".join(str(c) for c in cpus if c != 0)
    proc = subprocess.run(["taskset", "-c", others, str(bench_binary), "--json", "--quiet", "--spawn",
                           f"taskset -c 0 {binary} --host 127.0.0.1 --port {{port}} --service relay --shards 1 --no-pin",
                           "--rooms", "1", "--clients-per-room", "10", "--closed-loop",
                           "--warmup", "0.2", "--duration", "0.5"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, f"{report.get('failures')}\n{proc.stderr[-2000:]}"
    soft = report.get("serverSoftirqCPUSeconds")
    assert soft is not None and 0 <= soft <= report["serverCPUSeconds"], report
