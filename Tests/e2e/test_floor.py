"""The loopback floor tool (Benchmarks/floor/floor.c): it builds, sends every byte it says it sent
through both paths (plain send() and io_uring), and refuses bad arguments. Correctness only: the
per-frame costs it prints are measurements, not asserted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SOURCE = REPO_ROOT / "Benchmarks" / "floor" / "floor.c"
FRAME = 66
ROW = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)x$", re.M)
BYTES = re.compile(r"bytes sent (\d+), received (\d+)")


@pytest.fixture(scope="module")
def floor_binary(tmp_path_factory) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("clang")
    assert cc, "no C compiler (cc or clang) on PATH"
    out = tmp_path_factory.mktemp("floor") / "floor"
    build = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SOURCE), "-luring", "-lpthread"],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, f"building floor.c failed:\n{build.stderr[-4000:]}"
    return out


def run_floor(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), "--sender-cpu", "-1", "--receiver-cpu", "-1", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("batch", ["32", "0"])
def test_every_byte_of_both_paths_arrives(floor_binary, batch):
    sockets, rounds, repeats, frames = 40, 3, 2, [1, 4]
    proc = run_floor(floor_binary, "--sockets", str(sockets), "--rounds", str(rounds), "--repeats", str(repeats),
                     "--frames", ",".join(map(str, frames)), "--batch", batch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = ROW.findall(proc.stdout)
    assert [int(r[0]) for r in rows] == frames, proc.stdout
    for _, send_us, uring_us, ratio in rows:
        assert float(send_us) > 0 and float(uring_us) > 0 and float(ratio) > 0
    sent, received = map(int, BYTES.search(proc.stdout).groups())
    # Warm-up: rounds // 10 + 1 rounds of each path with the first frame count; then, per frame
    # count, `repeats` runs of each path of `rounds` rounds over every socket.
    warmup = 2 * (rounds // 10 + 1) * frames[0] * FRAME * sockets
    measured = sum(2 * repeats * rounds * k * FRAME * sockets for k in frames)
    assert sent == received == warmup + measured


@pytest.mark.parametrize("args", [["--sockets", "0"], ["--frames", "0"], ["--frames", "1,x"], ["--frames", "1,2,3,4,5,6,7,8,9"], ["--frames", "65"],
                                  ["--batch", "-1"], ["--batch", "32k"], ["--rounds"], ["--nonsense", "1"]])
def test_bad_arguments_are_refused_with_usage(floor_binary, args):
    proc = run_floor(floor_binary, *args)
    assert proc.returncode == 2
    assert "usage: floor" in proc.stderr
