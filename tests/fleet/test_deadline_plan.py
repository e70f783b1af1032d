"""The plan against the deadline on a local fleet of GCP-dialect nodes (a preemption: no time given, the 30 s default
window, 25 s after the 5 s margin), with real agents replicating, a real watcher, sshd, rsync and the reference
trainer. What the agents' replication measured decides: a node pair throttled (rsync --bwlimit) so that the
checkpoint cannot move within the window resumes from the replica at once and loses at most one checkpoint interval;
unthrottled, the same job moves its emergency checkpoint and loses nothing; a transfer that is slow only during the
migration (measured fast before) is given up mid-way for the replica, in time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from spot_migration import fleet as fleet_mod
from spot_migration.watch.app import Watcher
from spot_migration.watch.config import load
from spot_migration.watch.intake import to_epoch
from tests.helpers.fleet import (ansible_environ, free_port, install_agents, own_fleet, play_runner, secret_file, wait_for,
                                 worker_base)

SIZE_MB = 32
WINDOW = 25.0  # GCP's preemption gives no time: the 30 s default less the 5 s margin


@pytest.fixture(scope="module")
def pfleet(tmp_path_factory):
    with own_fleet(tmp_path_factory.mktemp("plan-fleet"), nodes=2, standby=1, clouds=("gcp",),
                   base_address=worker_base(230)) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def pplay(pfleet, ansible_env, tmp_path_factory):
    return play_runner(pfleet, ansible_env, tmp_path_factory.mktemp("plan-plays"))


@pytest.fixture(scope="module")
def agents(pfleet, pplay, ansible_env, tmp_path_factory):
    """The agents on the spot node, pointed at one address and secret that each test's own watcher takes over."""
    secret = secret_file(tmp_path_factory.mktemp("plan-agents"))
    port = free_port()
    ansible_environ(ansible_env)
    install_agents(pplay, f"http://127.0.0.1:{port}", secret)
    return {"port": port, "secret": secret}


@pytest.fixture
def watcher(pfleet, agents, tmp_path):
    made = []

    def start(replication_bwlimit: int = 0, transfer_bwlimit: int = 0) -> Watcher:
        config = load(None, inventory=str(pfleet.inventory_path), listen=f"127.0.0.1:{agents['port']}",
                      state_dir=str(tmp_path / "state"), secret_file=str(agents["secret"]), heartbeat_timeout=4.0)
        config.sweep.hosts = "none"
        config.replication.interval, config.replication.capacity_every = 1.0, 5
        config.replication.bwlimit = replication_bwlimit
        config.lost.enabled = False
        config.migrate.extra_vars = {"resume_timeout": 90, **({"spot_transfer_bwlimit": transfer_bwlimit}
                                                              if transfer_bwlimit else {})}
        log = open(tmp_path / "watch.log", "a")  # noqa: SIM115 - closed below
        w = Watcher(config, log=lambda msg: (log.write(time.strftime("%H:%M:%S ") + msg + "\n"), log.flush()))
        w.log_path = tmp_path / "watch.log"
        w.start()
        made.append((w, log))
        return w

    yield start
    for w, log in made:
        w.stop()
        log.close()


def _progress(fleet, node: str, name: str) -> dict:
    try:
        return json.loads((Path(fleet.node(node).paths["checkpoints"]) / name / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def _run(pfleet, pplay, w: Watcher, name: str, every: int) -> dict:
    """The trainer on node1 (a checkpoint at start and every ``every`` steps of 10 ms), its first replica on the
    standby node, a preemption; returns the migration's ledger row, its record row and the plan."""
    ck_dir = "{{ spot_checkpoint_root }}/" + name
    pplay([{"spot.migration.workload": {
        "name": name, "runtime": "process", "gpus": 1, "checkpoint_dir": ck_dir,
        "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
        "args": ["--checkpoint-dir", ck_dir, "--step-time", "0.01", "--every", str(every), "--keep", "2",
                 "--size-mb", str(SIZE_MB), "--initial-checkpoint", "--progress", ck_dir + "/progress.json"],
        "workload_root": "{{ spot_workload_root }}"}}], hosts="node1")

    def replicated():
        row = next((r for r in w.ledger.workloads() if r["name"] == name), {})
        measured = [m for m in w.ledger.measurements() if m["kind"] == "throughput" and m["key"] == "node1>standby1"]
        return row if row.get("replica_step") is not None and measured else None
    wait_for(replicated, 120, "a first replica on the standby node, its copy measured")
    # A preemption of this boot of node1 (each test's is a new one: GCE's notice is the instance's and the boot's).
    fleet_mod.new_boot(pfleet.dir, "node1")
    fleet_mod.inject(pfleet.dir, "node1", "preempt")
    try:
        done = wait_for(lambda: next((m for m in w.ledger.migrations() if m["state"] in ("running", "failed")), None),
                        120, "the migration's end")
    finally:
        fleet_mod.inject(pfleet.dir, "node1", "clear")
    assert done["state"] == "running", (done, w.log_path.read_text()[-3000:])
    [row] = [r for r in json.loads(done["record"])["migrations"] if r["workload"] == name] if isinstance(
        done["record"], str) else [r for r in done["record"]["migrations"] if r["workload"] == name]
    return {"migration": done, "row": row, "plan": w.ledger.plan(done["id"])["workloads"][name]}


def _cleanup(pplay, name: str) -> None:
    pplay([{"spot.migration.workload": {"name": name, "state": "absent", "workload_root": "{{ spot_workload_root }}"}}],
          hosts="node1,standby1")


def _running_within_the_window(result: dict) -> float:
    m, row = result["migration"], result["row"]
    took = to_epoch(row["started_on_target_at"]) - m["detected_at"]
    assert took <= WINDOW, f"running {took:.1f} s after the notice, past the {WINDOW} s window"
    return took


def test_a_throttled_pair_resumes_from_the_replica_at_once(pfleet, pplay, watcher):
    name = "plan-throttled"
    w = watcher(replication_bwlimit=1024)  # 32 MiB at 1 MiB/s: 32 s, past the 25 s window
    try:
        # A checkpoint every 35 s (3500 steps of 10 ms): longer than a copy, so the replica keeps up.
        result = _run(pfleet, pplay, w, name, every=3500)
        plan, row = result["plan"], result["row"]
        assert plan["choice"] == "replica", plan
        emergency = next(o for o in plan["options"] if o["from"] == "emergency")
        assert emergency["predicted_s"] > WINDOW and not emergency["fits"]
        assert row["resume_choice"] == "replica" and row["transfer"] == "replica" and row["target"] == "standby1"
        assert row["resumed_step"] == plan["options"][-1]["resumes_from_step"], "from the replica"
        assert row["first_new_step"] - row["resumed_step"] <= 3500 + 200, "at most one checkpoint interval lost"
        _running_within_the_window(result)
        assert _progress(pfleet, "standby1", name).get("resumed_from") == row["resumed_step"]
        assert plan["actual"]["from"] == "replica" and plan["actual"]["running_after_s"] is not None
    finally:
        _cleanup(pplay, name)


def test_unthrottled_the_emergency_checkpoint_moves_and_nothing_is_lost(pfleet, pplay, watcher):
    name = "plan-fast"
    w = watcher()
    try:
        result = _run(pfleet, pplay, w, name, every=300)
        plan, row = result["plan"], result["row"]
        assert plan["choice"] == "emergency" and plan["fallback"] == "replica", plan
        assert row["emergency_checkpoint_ok"] is True and row["transfer"] == "rsync" and not row.get("fell_back")
        replica = next(o for o in plan["options"] if o["from"] == "replica")["resumes_from_step"]
        assert row["resumed_step"] > replica, "resumed from the emergency checkpoint, newer than the replica"
        _running_within_the_window(result)
    finally:
        _cleanup(pplay, name)


def test_a_transfer_that_is_slow_only_now_falls_back_to_the_replica_in_time(pfleet, pplay, watcher):
    name = "plan-slowed"
    w = watcher(transfer_bwlimit=1024)  # replication measured fast; the migration's own push at 1 MiB/s
    try:
        result = _run(pfleet, pplay, w, name, every=300)
        plan, row = result["plan"], result["row"]
        assert plan["choice"] == "emergency" and plan["fallback"] == "replica", plan
        assert row["transfer"] == "replica" and "too slow for the window" in row["fell_back"], json.dumps(row, indent=1)
        assert row["target"] == "standby1" and row["resumed_step"] is not None
        _running_within_the_window(result)
        assert plan["actual"]["from"] == "replica" and plan["actual"]["fell_back"]
        assert not list(Path(pfleet.node("standby1").paths["checkpoints"]).glob(".spot-staging/*/*"))
    finally:
        _cleanup(pplay, name)
