"""How the source copy is stopped once its checkpoint is taken (``source_stop``): the real trainer under the process
driver, which writes a checkpoint on SIGUSR1 (the emergency one) and another on SIGTERM."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _migration, _workload

TRAINER = Path(__file__).resolve().parents[2] / "src" / "spot_migration" / "trainer.py"


def _start(tmp_path, *extra):
    driver = _workload.ProcessDriver(_agent._run, str(tmp_path / "workloads"))
    ckpt = tmp_path / "ckpt"
    spec = _workload.build_spec({"name": "job", "runtime": "process", "command": [sys.executable, str(TRAINER)],
                                 "args": ["--checkpoint-dir", str(ckpt), "--step-time", "0.01", "--every", "1000000",
                                          "--progress", str(tmp_path / "progress.json"), *extra],
                                 "checkpoint_dir": str(ckpt)})
    _workload.ensure_started(driver, spec, False)
    deadline = time.time() + 20
    while not (tmp_path / "progress.json").exists():  # training (its signal handlers are in place)
        assert time.time() < deadline, "the trainer never started training"
        time.sleep(0.05)
    return driver, ckpt


@pytest.fixture
def job(tmp_path):
    driver, ckpt = _start(tmp_path)
    try:
        yield driver, ckpt
    finally:
        driver.stop("job", 5, hard=True)


@pytest.fixture
def deaf_job(tmp_path):
    """A trainer that ignores the checkpoint signal (it still writes one when stopped with SIGTERM)."""
    driver, ckpt = _start(tmp_path, "--ignore-checkpoint-signal")
    try:
        yield driver, ckpt
    finally:
        driver.stop("job", 5, hard=True)


def _release(driver, emergency, stop):
    by_runtime = {"process": driver}
    moving = _migration.list_workloads(by_runtime)
    done = _migration.source_release(by_runtime, _agent._run, "m-1", "node1", moving, {"job": {"name": "node2"}},
                                     "relay", False, stop_timeout=20, emergency=emergency, stop=stop)
    [row] = done["sealed"]
    assert driver.status("job")["running"] is False
    return row


def _emergency(driver):
    asked = _migration.source_checkpoint({"process": driver}, "m-1", "node1", ["job"], False, 30, 5, None, False)
    rows = asked["migration"]["workloads"]
    assert rows["job"]["emergency_ok"], rows
    time.sleep(0.5)  # the job trains on: steps after the emergency checkpoint
    return rows


def test_auto_kills_at_once_after_a_complete_emergency_checkpoint(job):
    driver, ckpt = job
    rows = _emergency(driver)
    row = _release(driver, rows, "auto")
    assert row["stopped_by"] == "SIGKILL", row
    assert row["step"] == rows["job"]["emergency_step"], (row, rows)
    assert sorted(p.name for p in ckpt.glob("step-*.safetensors")) == [Path(row["checkpoint"]).name], \
        "no second checkpoint was written on the way down"


def test_graceful_lets_the_job_write_its_last_checkpoint(job):
    driver, _ckpt = job
    rows = _emergency(driver)
    row = _release(driver, rows, "graceful")
    assert row["stopped_by"] == "SIGTERM", row
    assert row["step"] > rows["job"]["emergency_step"], (row, rows)


def test_auto_without_an_emergency_checkpoint_stops_gracefully(job):
    driver, _ckpt = job
    time.sleep(0.5)
    row = _release(driver, {"job": {"emergency_ok": False, "emergency_error": "not in time"}}, "auto")
    assert row["stopped_by"] == "SIGTERM" and row["step"] > 0, row


def _ask_only(driver, deadline=30, margin=5):
    started = time.monotonic()
    asked = _migration.source_checkpoint({"process": driver}, "m-1", "node1", ["job"], False, deadline, margin, None,
                                         False, wait=False)
    return asked, time.monotonic() - started


def test_asked_without_waiting_the_release_waits_for_the_emergency_checkpoint(job):
    driver, ckpt = job
    asked, _took = _ask_only(driver)
    assert asked["migration"]["step"] == "checkpointing"
    rows = asked["migration"]["workloads"]
    assert rows["job"]["emergency_ok"] is None and rows["job"]["signal"] == "SIGUSR1", rows
    assert rows["job"]["emergency_signalled_at"] <= time.time() <= rows["job"]["emergency_until"], rows
    assert driver.status("job")["running"], "asking stops nothing"
    row = _release(driver, rows, "auto")
    assert row["emergency_ok"] is True, row
    assert row["step"] == row["emergency_step"] and row["checkpoint"] == row["emergency_checkpoint"], row
    assert row["stopped_by"] == "SIGKILL", row                # its checkpoint was complete: killed at once
    assert "emergency_until" not in row and "emergency_dir" not in row, row
    assert sorted(p.name for p in ckpt.glob("step-*.safetensors")) == [Path(row["checkpoint"]).name]


def test_a_late_emergency_checkpoint_is_waited_for_until_the_deadline_only(deaf_job):
    driver, _ckpt = deaf_job
    asked, took = _ask_only(driver, deadline=3.5, margin=1)  # 2.5 s to write it
    assert took < 2.0, f"asking took {took:.2f} s: it waited"
    rows = asked["migration"]["workloads"]
    row = _release(driver, rows, "auto")
    assert row["emergency_ok"] is False and "wrote no complete checkpoint within" in row["emergency_error"], row
    assert row["stopped_by"] == "SIGTERM" and row["step"] > 0, row   # stopped gracefully: its final checkpoint moves
    assert rows["job"]["emergency_until"] - time.time() < 0, "released before the deadline passed"


def test_await_emergency_leaves_answered_rows_alone():
    answered = {"emergency_ok": False, "emergency_error": "not in time"}
    assert _migration.await_emergency(None, "job", answered) == answered
    assert _migration.await_emergency(None, "job", {}) == {}
