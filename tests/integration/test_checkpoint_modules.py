"""checkpoint_info and checkpoint_manifest through ansible-playbook, on checkpoints from the real libraries.
Mutating tasks run four ways: check, real, check again, real again."""

from __future__ import annotations

import json
import os
import time

from tests.helpers import writers


def _run(run_playbook, tmp_path, tasks, args=None):
    path = tmp_path / "play.json"
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    return run_playbook(path, args=args)


def test_checkpoint_info_and_manifest_lifecycle(run_playbook, tmp_path):
    ckpts = tmp_path / "ckpts"
    good = writers.write_hf(ckpts, 100)
    old = time.time() - 60
    for p in good.rglob("*"):
        os.utime(p, (old, old))
    torn = writers.write_hf(ckpts, 200)
    (torn / "trainer_state.json").unlink()
    seal = {"spot.migration.checkpoint_manifest": {"path": "{{ info.checkpoint }}", "format": "hf", "step": 100}}
    tasks = [
        {"spot.migration.checkpoint_info": {"path": str(ckpts)}, "register": "info"},
        {"ansible.builtin.assert": {"that": [
            "info is not changed", f"info.checkpoint == '{good}'", "info.format == 'hf'", "info.step == 100",
            "info.rejected | length == 1", "'no trainer_state.json' in info.rejected[0].reason",
            "'model.safetensors' in info.files"]}},
        dict(seal, name="seal (check)", check_mode=True, register="s1"),
        dict(seal, name="seal (real)", register="s2"),
        dict(seal, name="seal (check again)", check_mode=True, register="s3"),
        dict(seal, name="seal (real again)", register="s4"),
        {"ansible.builtin.assert": {"that": [
            "s1 is changed", "s2 is changed", "s3 is not changed", "s4 is not changed",
            "s2.file_count == 4", "s2.files['model.safetensors'].sha256 | length == 64"]}},
        {"spot.migration.checkpoint_manifest": {"path": str(good), "state": "verified"}, "register": "v"},
        {"ansible.builtin.assert": {"that": ["v is not changed", "v.missing == []", "v.mismatched == []",
                                             "v.file_count == 4"]}},
        {"name": "flip a bit", "ansible.builtin.command": {
            "argv": ["python3", "-c",
                     "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[200]^=1; open(p,'wb').write(b)",
                     str(good / "model.safetensors")]}, "changed_when": True},
        {"ansible.builtin.file": {"path": str(good / "config.json"), "state": "absent"}},
        {"spot.migration.checkpoint_manifest": {"path": str(good), "state": "verified"}, "register": "bad",
         "ignore_errors": True},
        {"ansible.builtin.assert": {"that": [
            "bad is failed", "bad.missing == ['config.json']", "bad.mismatched[0].file == 'model.safetensors'",
            "'does not match its manifest' in bad.msg"]}},
    ]
    result = _run(run_playbook, tmp_path, tasks, args=["--diff"])
    assert result.returncode == 0, result.stdout[-5000:]
    assert "+++ after: " in result.stdout and "model.safetensors" in result.stdout


def test_checkpoint_info_fails_with_rejected_and_waits(run_playbook, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "step-1.pt.partial").write_bytes(b"PK\x03\x04partial")
    torn = writers.write_torch(ckpts / "step-2.pt", 2)
    torn.write_bytes(torn.read_bytes()[:100])
    tasks = [
        {"spot.migration.checkpoint_info": {"path": str(ckpts), "wait_timeout": 1}, "register": "nothing",
         "ignore_errors": True},
        {"ansible.builtin.assert": {"that": [
            "nothing is failed", "'no complete checkpoint under' in nothing.msg", "'after waiting' in nothing.msg",
            "nothing.rejected | length == 2", "nothing.elapsed >= 1"]}},
        {"spot.migration.checkpoint_info": {"path": str(ckpts), "newer_than": "yesterday"}, "register": "badtime",
         "ignore_errors": True},
        {"ansible.builtin.assert": {"that": ["badtime is failed", "'yesterday' in badtime.msg"]}},
    ]
    result = _run(run_playbook, tmp_path, tasks)
    assert result.returncode == 0, result.stdout[-5000:]
