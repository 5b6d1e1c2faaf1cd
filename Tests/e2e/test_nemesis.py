"""A short run of the fault-injection test (Tests/e2e/nemesis.py): nodes paused past their lease,
stopped and started, Redis restarted and paused, with counter rooms incrementing throughout.
Nothing answered may be lost or served stale. The seed is printed with the result; set
STATEROOM_NEMESIS_SEED to replay one, STATEROOM_NEMESIS_SECONDS for a longer run."""
import asyncio
import os

import pytest

import nemesis
from conftest import server_binary

SECONDS = float(os.environ.get("STATEROOM_NEMESIS_SECONDS", "20"))


def run_nemesis(tmp_path, capsys, io: str, seed: int, kill: bool, seconds: float) -> None:
    binary = server_binary()
    if not binary.exists():
        pytest.fail(f"server binary not found at {binary}")
    seed = int(os.environ.get("STATEROOM_NEMESIS_SEED", seed))
    result = asyncio.run(nemesis.run(seed, seconds, kill, io, 4, binary, tmp_path))
    with capsys.disabled():
        print("\n" + nemesis.report(result))
    assert result["answered"] > 0, "no increment was answered at all"
    assert result["rounds"] > 0, "no fault was injected"
    if result["problems"] or result["lost"]:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(tmp_path.glob("n*.log")))
        pytest.fail(nemesis.report(result) + "\n" + "\n".join(result["schedule"]) + "\n" + logs, pytrace=False)


def test_faults_lose_no_answered_update(tmp_path, capsys, io_backend):
    run_nemesis(tmp_path, capsys, io_backend, seed=24 if io_backend == "uring" else 25, kill=False, seconds=SECONDS)


def test_sigkill_loses_no_answered_update_either(tmp_path, capsys):
    # Once, on the first backend asked for (the faults, not the I/O backend, are under test).
    io = os.environ.get("STATEROOM_IO", "uring").split(",")[0]
    run_nemesis(tmp_path, capsys, io, seed=26, kill=True, seconds=SECONDS * 0.75)
