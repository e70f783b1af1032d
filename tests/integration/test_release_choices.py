"""The release step under the watcher's plan against the deadline (``choices``): move the emergency checkpoint,
move the newest one on disk at once, or only stop the job for its target's replica; and a copy too slow for the
window given up for that replica. Real trainer, real rsync (the "remote" side is this machine, through the ssh
stand-in of test_seal_while_sending)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _migration, _transfer, _workload

from tests.helpers.ssh_stand_in import fake_ssh

TRAINER = Path(__file__).resolve().parents[2] / "src" / "spot_migration" / "trainer.py"

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")


@pytest.fixture
def node(tmp_path):
    ssh = fake_ssh(tmp_path)
    target_root = tmp_path / "target"
    target_root.mkdir()
    driver = _workload.ProcessDriver(_agent._run, str(tmp_path / "workloads"))
    ckpt = tmp_path / "ckpt"
    spec = _workload.build_spec({"name": "job", "runtime": "process", "command": [sys.executable, str(TRAINER)],
                                 "args": ["--checkpoint-dir", str(ckpt), "--step-time", "0.01", "--every", "1000000",
                                          "--initial-checkpoint", "--size-mb", "24",
                                          "--progress", str(tmp_path / "progress.json")],
                                 "checkpoint_dir": str(ckpt)})
    _workload.ensure_started(driver, spec, False)
    try:
        deadline = time.time() + 30
        while not (tmp_path / "progress.json").exists() or not list(ckpt.glob("step-*.spot-manifest.json")) and \
                not list(ckpt.glob("step-*")):
            assert time.time() < deadline, "the trainer never started training"
            time.sleep(0.05)
        time.sleep(0.5)
        yield {"driver": driver, "ssh": [str(ssh)], "target_root": str(target_root), "ckpt": ckpt}
    finally:
        driver.stop("job", 5, hard=True)


def _release(node, choices, emergency=None, bwlimit=0, replica=True):
    by_runtime = {"process": node["driver"]}
    moving = _migration.list_workloads(by_runtime)
    assignment = {"name": "node2", "host": "node2", "ssh": node["ssh"], "root": node["target_root"],
                  "replica_root": os.path.join(node["target_root"], "replicas", "job") if replica else None}
    done = _migration.source_release(by_runtime, _agent._run, "m-1", "node1", moving, {"job": assignment}, "rsync",
                                     False, stop_timeout=10, emergency=emergency or {}, choices=choices,
                                     bwlimit=bwlimit)
    [row] = done["sealed"]
    assert node["driver"].status("job")["running"] is False, "the source copy is stopped in every case"
    return row


def test_replica_only_stops_the_job_at_once(node):
    start = time.monotonic()
    row = _release(node, {"job": {"from": "replica"}})
    assert time.monotonic() - start < 5
    assert row["transfer"] == "replica" and row["target"] == "node2" and row["stopped_by"] == "SIGKILL"
    assert row["checkpoint"] is None and row["transfer_error"] is None and row["resume_choice"] == "replica"
    assert not os.path.exists(os.path.join(node["target_root"], ".spot-staging")), "nothing was copied"


def test_without_a_replica_on_the_target_the_newest_checkpoint_moves_and_says_why(node):
    row = _release(node, {"job": {"from": "replica", "fallback": "replica"}}, replica=False)
    assert row["resume_choice"] == "newest" and "no replica on the target" in row["choice_note"]
    assert row["transfer"] == "rsync" and row["staged"] and row["transfer_error"] is None


def test_newest_does_not_wait_for_the_emergency_checkpoint(node):
    # Asked a second ago and due for two minutes more: "emergency" would wait for it; "newest" takes what is there.
    asked = {"job": {"emergency_ok": None, "emergency_signalled_at": time.time() + 60, "emergency_until": time.time() + 120,
                     "emergency_dir": str(node["ckpt"]), "signal": "SIGUSR1"}}
    start = time.monotonic()
    row = _release(node, {"job": {"from": "newest"}}, emergency=asked)
    assert time.monotonic() - start < 20, "it waited for the emergency checkpoint"
    assert row["stopped_by"] == "SIGKILL" and row["staged"] and row["transfer_error"] is None
    assert "emergency_until" not in row and "emergency_dir" not in row


def test_a_copy_too_slow_for_the_window_falls_back_to_the_replica_and_leaves_nothing_staged(node):
    # 24 MiB at 2 MiB/s cannot end within the 5 s left: after SLOW_AFTER seconds its running total says so.
    asked = {"job": {"emergency_ok": True, "emergency_checkpoint": None, "emergency_until": time.time() + 5}}
    start = time.monotonic()
    row = _release(node, {"job": {"from": "newest", "fallback": "replica"}}, emergency=asked, bwlimit=2048)
    took = time.monotonic() - start
    assert row["transfer"] == "replica" and "too slow for the window" in row["fell_back"], row
    assert row["transfer_error"] is None and row["staged"] is None and "staging" not in row
    assert took < 5 + 2, f"given up only after {took:.1f} s"
    assert not list(Path(node["target_root"]).glob(".spot-staging/*/*")), "the partial copy is removed"


def test_a_fast_copy_with_a_fallback_just_moves(node):
    row = _release(node, {"job": {"from": "newest", "fallback": "replica"}},
                   emergency={"job": {"emergency_until": time.time() + 60}})
    assert row["transfer"] == "rsync" and row["staged"] and not row.get("fell_back")


def test_the_watchdog_stops_a_command_that_says_nothing(tmp_path):
    start = time.monotonic()
    rc, _out, _err = _transfer.stream_command(["sleep", "30"], lambda line: False, until=time.time() + 1)
    assert rc != 0 and time.monotonic() - start < 5


@pytest.mark.parametrize("bad, message", [
    ({"job": {"from": "somewhere"}}, "from 'somewhere' is not one of emergency, newest, replica"),
    ({"job": {"from": "newest", "fallback": "elsewhere"}}, "fallback 'elsewhere' is not replica"),
    ({"job": "replica"}, "must be {from, fallback}"),
])
def test_bad_choices_are_refused_naming_the_value(bad, message):
    with pytest.raises(_migration.MigrationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        _migration.check_choices(bad, {})
