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
ROLE_TEXT = "\n".join(p.read_text() for p in sorted((ROOT / "roles" / "migrate" / "tasks").glob("*.yml")))
ROLE_TEXT += (ROOT / "playbooks" / "migrate.yml").read_text() + (ROOT / "playbooks" / "probe.yml").read_text()


@pytest.mark.parametrize("task", sorted({task for kind, task in actions.STATE_TASKS} | {
    actions.WORKLOAD_TASK, actions.TARGET_TASK, actions.STEP_TASK, actions.PROBE_TASK}))
def test_every_task_the_watcher_follows_exists(task):
    assert f"- name: {task}\n" in ROLE_TEXT


def test_events_become_states_and_facts():
    calls = []
    events = actions.MigrationEvents(lambda state, **kw: calls.append((state, kw)))
    stream = [
        {"event": "playbook_on_task_start", "event_data": {"task": "Ask each workload for an emergency checkpoint"}},
        {"event": "runner_on_ok", "event_data": {"task": actions.WORKLOAD_TASK, "res": {
            "ansible_facts": {"migrate_moving": [{"name": "a"}, {"name": "b"}]}}}},
        {"event": "runner_item_on_ok", "event_data": {"task": actions.TARGET_TASK, "res": {
            "item": {"name": "a"}, "target": "standby1"}}},
        {"event": "runner_item_on_ok", "event_data": {"task": actions.STEP_TASK, "res": {
            "item": {"name": "a"}, "step": 120}}},
        {"event": "runner_on_ok", "event_data": {"task": "Verify the staged copy against its manifest"}},
        {"event": "runner_on_failed", "event_data": {"task": "Resume", "host": "standby1", "res": {"msg": "boom"}}},
        {"event": "runner_on_failed", "event_data": {"task": "x", "ignore_errors": True, "res": {"msg": "fine"}}},
        {"event": "verbose", "event_data": {}},
    ]
    for event in stream:
        events(event)
    assert [c[0] for c in calls] == ["checkpointing", "checkpointing", "target_reserved", "target_reserved", "verified"]
    assert calls[1][1]["workloads"] == ["a", "b"]
    assert calls[2][1]["targets"] == {"a": "standby1"} and calls[3][1]["steps"] == {"a": 120}
    assert events.failures == ["standby1: Resume: boom"]


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
