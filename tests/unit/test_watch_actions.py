"""The watcher's side of the migrate playbook: task names mapped to ledger states (they must exist in the
role), events turned into states and facts, and the clean-up of a dead watcher's runs by marker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


from spot_migration.watch import actions

ROOT = Path(__file__).resolve().parents[2]


def _ok(res, host="node1", task="renamed freely"):
    return {"event": "runner_on_ok", "event_data": {"task": task, "host": host, "res": res}}


def test_events_become_states_and_facts_from_data_alone():
    calls = []
    events = actions.MigrationEvents(lambda state, **kw: calls.append((state, kw)))
    stream = [
        {"event": "playbook_on_task_start", "event_data": {"task": "Ask each workload for an emergency checkpoint"}},
        _ok({"migration": {"id": "m1", "step": "checkpointed", "workloads": {"a": {}, "b": {}}}}),
        _ok({"reservations": [{"owner": "m1/a", "target": "standby1"}, {"owner": "m1/b", "target": None}]}, "localhost"),
        _ok({"migration": {"id": "m1", "step": "transferred", "workloads": {
            "a": {"step": 120, "target": "standby1"}, "b": {"step": 7, "target": "node3", "transfer_error": "x"}}}}),
        _ok({"migration": {"id": "m1", "step": "started", "target": "standby1", "workloads": {
            "a": {"migration_id": "m1"}}}}, "standby1"),
        {"event": "runner_on_failed", "event_data": {"task": "Resume", "host": "standby1", "res": {"msg": "boom"}}},
        {"event": "runner_on_failed", "event_data": {"task": "x", "ignore_errors": True, "res": {"msg": "fine"}}},
        _ok({"changed": False}),  # any other task: nothing
        {"event": "verbose", "event_data": {}},
    ]
    for event in stream:
        events(event)
    assert [c[0] for c in calls] == ["checkpointing", "checkpointed", "target_reserved", "transferring", "verified",
                                     "resuming"]
    assert calls[0][1]["workloads"] == ["a", "b"]
    assert calls[2][1]["targets"] == {"a": "standby1"}
    assert calls[3][1]["steps"] == {"a": 120, "b": 7} and calls[3][1]["targets"] == {"a": "standby1"}
    assert calls[4][1]["targets"] == {"a": "standby1"}
    assert events.failures == ["standby1: boom"]


def test_checkpoints_asked_without_waiting_are_checkpointing_only():
    """The playbook asks for the emergency checkpoints and reserves while they are written: step ``checkpointing``
    (the ledger goes on to target_reserved), never a ``checkpointed`` that did not happen."""
    calls = []
    events = actions.MigrationEvents(lambda state, **kw: calls.append((state, kw)))
    events(_ok({"migration": {"id": "m1", "step": "checkpointing", "workloads": {"a": {"emergency_ok": None}}}}))
    events(_ok({"reservations": [{"owner": "m1/a", "target": "standby1"}]}, "localhost"))
    assert [c[0] for c in calls] == ["checkpointing", "target_reserved"]
    assert calls[0][1]["workloads"] == ["a"]
    assert set(actions.STEP_STATES) >= {"checkpointing", "checkpointed", "transferred", "started"}


def test_a_wave_routes_each_result_to_its_own_migration():
    calls: dict[str, list] = {"m1": [], "m2": []}
    events = actions.MigrationEvents(routes={m: (lambda state, m=m, **kw: calls[m].append(state)) for m in calls})
    events(_ok({"migration": {"id": "m2", "step": "checkpointed", "workloads": {"b": {}}}}, "node2"))
    events(_ok({"reservations": [{"owner": "m1/a", "target": "t1"}, {"owner": "m2/b", "target": "t1"}]}, "localhost"))
    events(_ok({"migration": {"id": "m1", "step": "started", "target": "t1", "workloads": {
        "a": {"migration_id": "m1"}, "b": {"migration_id": "m2"}}}}, "t1"))
    events(_ok({"migration": {"id": "m9", "step": "checkpointed", "workloads": {}}}))  # not ours: ignored
    assert calls["m1"] == ["target_reserved", "verified", "resuming"]
    assert calls["m2"] == ["checkpointing", "checkpointed", "target_reserved", "verified", "resuming"]


def test_kill_marked_stops_only_the_marked_processes():
    code = "import time; time.sleep(60)"
    marked = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, SPOT_MIGRATION_RUN="m-1"))
    other = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, SPOT_MIGRATION_RUN="m-10"))
    try:
        time.sleep(0.2)
        assert actions.kill_marked("m-1") == [marked.pid]
        assert marked.wait(5) == -9
        assert other.poll() is None
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()


def test_workload_plays_pass_names_as_data():
    plays = actions.workload_plays(["node1", "standby1"], ["a; rm -rf /"], remove_from="node1")
    assert plays[0]["hosts"] == "node1" and plays[0]["tasks"][1]["vars"] == {"names": ["a; rm -rf /"]}
    assert plays[1]["hosts"] == "node1,standby1"


def test_kept_control_dir_outlives_runs_and_close_stops_its_masters(tmp_path):
    acts = actions.Actions(str(tmp_path / "inventory.ini"), tmp_path / "runs", log=lambda *_: None)
    kept = acts.kept_control_dir("sweep")
    assert acts.kept_control_dir("sweep") == kept and Path(kept).is_dir()
    # A stand-in for an SSH master connection, named as ssh names its mux masters ("ssh: <control path> [mux]").
    master = subprocess.Popen(["bash", "-c", f'exec -a "ssh: {kept}/5f2a [mux]" sleep 60'])
    time.sleep(0.2)
    try:
        acts.close()
        assert master.wait(5) == -15
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    assert not Path(kept).exists()


def test_the_runs_get_a_slower_poll_only_where_the_user_has_no_ansible_cfg(tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    monkeypatch.chdir(work)
    if Path("/etc/ansible/ansible.cfg").exists():
        pytest.skip("this machine has /etc/ansible/ansible.cfg: ansible uses it")
    env = actions.run_config(tmp_path)
    assert env == {"ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg")}
    assert "internal_poll_interval = 0.01" in (tmp_path / "ansible.cfg").read_text()
    # The user's own configuration is never replaced: in the home, or named by ANSIBLE_CONFIG.
    (home / ".ansible.cfg").write_text("[defaults]\nforks = 7\n")
    assert actions.run_config(tmp_path) == {}
    (home / ".ansible.cfg").unlink()
    mine = tmp_path / "mine.cfg"
    mine.write_text("[defaults]\n")
    monkeypatch.setenv("ANSIBLE_CONFIG", str(mine))
    assert actions.run_config(tmp_path) == {}
