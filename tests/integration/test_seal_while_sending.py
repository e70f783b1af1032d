"""A big checkpoint is hashed while real rsync pushes it, then its manifest follows over the same connection
(_transfer.RsyncPush.send_while_sealing, used by source_release from SEAL_WHILE_SENDING bytes). The "remote" side is
this machine: a stand-in ssh runs the remote command locally and logs how it was called."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _checkpoint, _migration, _transfer, _workload
from tests.helpers.ssh_stand_in import fake_ssh

TRAINER = Path(__file__).resolve().parents[2] / "src" / "spot_migration" / "trainer.py"


pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")


@pytest.fixture
def remote(tmp_path):
    ssh = fake_ssh(tmp_path)
    root = tmp_path / "target"
    root.mkdir()
    return _transfer.Endpoint("node2", [str(ssh)], str(root), "node2"), ssh.parent / "calls.log"


def _file(path: Path, mib: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for _mib in range(mib):
            handle.write(os.urandom(1 << 20))
    return path


def test_a_file_is_sealed_while_it_goes_and_its_manifest_follows(tmp_path, remote):
    target, calls = remote
    ckpt = _file(tmp_path / "src" / "step-00000007.bin", 24)
    staging = os.path.join(target.root, ".spot-staging", "m-1")
    push = _transfer.RsyncPush(_agent._run)
    sent, sealed = push.send_while_sealing(str(ckpt), False, ckpt.stat().st_size, target, staging,
                                           lambda: _checkpoint.seal(str(ckpt), step=7))
    staged = os.path.join(staging, ckpt.name)
    assert sent["staged"] == staged and sealed["changed"] is True
    assert _checkpoint.verify(staged)["total_bytes"] == 24 << 20
    assert json.loads(Path(staged + ".spot-manifest.json").read_text())["step"] == 7
    lines = calls.read_text().splitlines()
    # Data, then the manifest, over one ControlMaster of the send's own; closed at the end.
    assert len(lines) == 3 and all("ControlPath=" in line for line in lines)
    assert len({line.split("ControlPath=")[1].split()[0] for line in lines}) == 1
    assert lines[-1].split()[-3:] == ["-O", "exit", "node2"]


def test_a_directory_goes_without_its_old_manifest_and_gets_the_new_one(tmp_path, remote):
    target, _calls = remote
    ckpt = tmp_path / "src" / "step-00000009"
    _file(ckpt / "shard-0.bin", 4)
    _file(ckpt / "shard-1.bin", 4)
    (ckpt / ".spot-manifest.json").write_text(json.dumps({"algorithm": "sha256", "files": {
        "shard-0.bin": {"size": 1, "sha256": "0" * 64}}}))  # an older seal of what was there
    staging = os.path.join(target.root, ".spot-staging", "m-2")
    sent, sealed = _transfer.RsyncPush(_agent._run).send_while_sealing(
        str(ckpt), True, 8 << 20, target, staging, lambda: _checkpoint.seal(str(ckpt), step=9))
    assert sealed["changed"] is True and sealed["file_count"] == 2
    checked = _checkpoint.verify(sent["staged"])
    assert checked["file_count"] == 2 and checked["step"] == 9


def test_a_seal_that_fails_is_raised_after_the_copy_and_the_connection_is_closed(tmp_path, remote):
    target, calls = remote
    ckpt = _file(tmp_path / "src" / "step-00000001.bin", 2)

    def broken():
        raise _checkpoint.CheckpointError("checkpoint vanished")
    with pytest.raises(_checkpoint.CheckpointError, match="vanished"):
        _transfer.RsyncPush(_agent._run).send_while_sealing(str(ckpt), False, 2 << 20, target,
                                                            os.path.join(target.root, "s"), broken)
    assert calls.read_text().splitlines()[-1].endswith("-O exit node2")
    assert not os.path.exists(os.path.join(target.root, "s", ckpt.name + ".spot-manifest.json"))


def test_the_release_of_a_big_checkpoint_seals_it_while_pushing(tmp_path, remote, monkeypatch):
    target, calls = remote
    monkeypatch.setattr(_migration, "SEAL_WHILE_SENDING", 1)
    driver = _workload.ProcessDriver(_agent._run, str(tmp_path / "workloads"))
    ckpt = tmp_path / "ckpt"
    spec = _workload.build_spec({"name": "job", "runtime": "process", "command": [sys.executable, str(TRAINER)],
                                 "args": ["--checkpoint-dir", str(ckpt), "--step-time", "0.01", "--every", "20",
                                          "--size-mb", "2", "--progress", str(tmp_path / "progress.json")],
                                 "checkpoint_dir": str(ckpt)})
    _workload.ensure_started(driver, spec, False)
    try:
        deadline = time.time() + 30
        while not list(ckpt.glob("step-*")):
            assert time.time() < deadline, "the trainer wrote no checkpoint"
            time.sleep(0.05)
        by_runtime = {"process": driver}
        moving = _migration.list_workloads(by_runtime)
        assignment = {"name": "node2", "host": "node2", "ssh": target.ssh, "root": target.root}
        done = _migration.source_release(by_runtime, _agent._run, "m-3", "node1", moving, {"job": assignment},
                                         "rsync", False, stop_timeout=10, stop="auto")
    finally:
        driver.stop("job", 5, hard=True)
    [row] = done["sealed"]
    assert row["transfer_error"] is None and "error" not in row, row
    assert row["sealed_changed"] is True and row["verified_at"] >= row["transfer_started_at"]
    assert _checkpoint.verify(row["staged"])["step"] == row["step"]
    assert "ControlPath=" in calls.read_text()
