"""Writers SIGKILLed at random points, over and over: checkpoint_info never accepts a partial.

Each round a real library (torch.save, safetensors, torch.distributed.checkpoint) starts writing
step N and is killed after a random delay. Then checkpoint_info must return exactly the newest step
that the library itself can load back with the right content, and reject the torn one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _checkpoint as ck
from tests.helpers import writers

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = {"torch": ".pt", "safetensors": ".safetensors", "dcp": ""}


@pytest.fixture
def zygote():
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "helpers" / "zygote.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    children: list[int] = []

    def spawn(fmt: str, path: Path, step: int, numel: int) -> int:
        proc.stdin.write(f"{fmt} {path} {step} {numel}\n")
        proc.stdin.flush()
        pid = int(proc.stdout.readline())
        children.append(pid)
        return pid

    yield spawn
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()
    proc.wait()


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.002)
    raise AssertionError(f"writer {pid} did not exit")


def _loads(path: Path, step: int, numel: int) -> bool:
    try:
        return writers.load_step(path, numel) == step
    except Exception:  # a torn checkpoint fails to load in the library's own way
        return False


@pytest.mark.parametrize("fmt, rounds, numel", [("torch", 60, 3_000_000), ("safetensors", 60, 3_000_000),
                                                ("dcp", 30, 3_000_000)])
def test_killed_writer_never_leaves_an_accepted_partial(tmp_path, zygote, fmt, rounds, numel):
    rng = random.Random(f"{fmt}-{os.getpid()}")
    # How long one full write takes here, to kill somewhere inside it.
    start = time.monotonic()
    pid = zygote(fmt, tmp_path / f"step-0{SUFFIX[fmt]}", 0, numel)
    _wait_gone(pid)
    full = max(0.005, time.monotonic() - start)
    complete = {0}
    torn = 0
    for step in range(1, rounds + 1):
        path = tmp_path / f"step-{step}{SUFFIX[fmt]}"
        pid = zygote(fmt, path, step, numel)
        time.sleep(rng.uniform(0, full * 1.2))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(pid)
        if path.exists() and _loads(path, step, numel):
            complete.add(step)
        else:
            torn += 1
        result = ck.find_checkpoint(str(tmp_path))
        newest = max(complete)
        assert result["step"] == newest, (f"round {step}: accepted step {result['step']}, newest loadable is {newest}; "
                                          f"rejected {result['rejected']}")
        assert _loads(Path(result["checkpoint"]), newest, numel)
        if step not in complete and path.exists():
            assert str(path) in [r["path"] for r in result["rejected"]], f"torn step {step} was not reported"
    # The test proves something only if kills really landed mid-write.
    assert torn >= rounds // 5, f"only {torn} of {rounds} kills tore a checkpoint (write takes {full:.3f} s)"
