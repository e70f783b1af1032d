"""Prevention on a local fleet with real agents, a real watcher, sshd, rsync and the reference trainer:
continuous replication keeps up with a trainer checkpointing every few seconds and never shows an incomplete
replica; a node that is merely slow is not declared lost; a node that vanishes without a notice is declared lost
after the grace period, fenced, and its workload resumes on the replica node from the last replicated step; when
the node comes back its stale copy is stopped and can never start again."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from ansible_collections.spot.migration.plugins.module_utils import _checkpoint as ck
from spot_migration import fleet as fleet_mod
from spot_migration.watch.app import Watcher
from spot_migration.watch.config import load
from tests.helpers.fleet import (ansible_environ, free_port, install_agents, own_fleet, play_runner, secret_file, wait_for,
                                 worker_base)

EVERY = 800          # trainer checkpoints every 800 steps of 10 ms: about every 8 s here
GRACE = 14.0
NAME = "rep-train"


@pytest.fixture(scope="module")
def rfleet(tmp_path_factory):
    with own_fleet(tmp_path_factory.mktemp("rep-fleet"), nodes=4, standby=1, base_address=worker_base(200)) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def rplay(rfleet, ansible_env, tmp_path_factory):
    return play_runner(rfleet, ansible_env, tmp_path_factory.mktemp("rep-plays"))


@pytest.fixture(scope="module")
def rwatcher(rfleet, rplay, ansible_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rep-watch")
    secret = secret_file(workdir)
    port = free_port()
    ansible_environ(ansible_env)
    config = load(None, inventory=str(rfleet.inventory_path), listen=f"127.0.0.1:{port}", state_dir=str(workdir / "state"),
                  secret_file=str(secret), heartbeat_timeout=4.0)
    config.sweep.interval, config.sweep.timeout = 2.0, 3.0
    config.replication.interval, config.replication.capacity_every = 1.0, 5
    config.lost.grace = GRACE
    log = open(workdir / "watch.log", "a")  # noqa: SIM115 - closed below
    watcher = Watcher(config, log=lambda msg: (log.write(time.strftime("%H:%M:%S ") + msg + "\n"), log.flush()))
    watcher.log_path = workdir / "watch.log"
    install_agents(rplay, watcher.server.url, secret)
    watcher.agent_secret = secret.read_text()
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()
        log.close()


def progress(fleet, node: str) -> dict:
    try:
        return json.loads((Path(fleet.node(node).paths["checkpoints"]) / NAME / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def row(watcher) -> dict:
    return next((w for w in watcher.ledger.workloads() if w["name"] == NAME), {})


@pytest.fixture(scope="module")
def rjob(rfleet, rplay, rwatcher):
    """The trainer on node1, checkpointing every EVERY steps, with its first replica in place (the ledger row then).
    Each test that needs it asks for it: pytest-xdist may run this module's tests on different workers."""
    ck_dir = "{{ spot_checkpoint_root }}/" + NAME
    rplay([{"spot.migration.workload": {
        "name": NAME, "runtime": "process", "gpus": 1, "checkpoint_dir": ck_dir,
        "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
        "args": ["--checkpoint-dir", ck_dir, "--step-time", "0.01", "--every", str(EVERY), "--keep", "2",
                 "--size-mb", "4", "--progress", ck_dir + "/progress.json"],
        "workload_root": "{{ spot_workload_root }}"}},
        {"spot.migration.checkpoint_info": {"path": ck_dir, "wait_timeout": 30}}])
    return wait_for(lambda: row(rwatcher).get("replica_step") is not None and row(rwatcher), 90, "a first replica")


def test_replication_keeps_up_and_shows_only_complete_replicas(rfleet, rwatcher, rjob):
    first = rjob
    replica = first["replica"]
    assert replica == "standby1", first  # the on-demand node ranks first: the next target the watcher would pick
    root = Path(first["replica_root"])
    steps, lags = {first["replica_step"]}, []
    end = time.time() + 5 * EVERY * 0.01 + 5  # five checkpoint intervals
    while time.time() < end:
        r = row(rwatcher)
        steps.add(r["replica_step"])
        if r.get("source_step") is not None:
            lags.append(r["source_step"] - r["replica_step"])
        # Whatever is published at any moment is complete: every step-* directory verifies against its manifest.
        for published in root.glob("step-*"):
            entry = [p for p in published.iterdir() if not p.name.endswith(ck.MANIFEST_NAME)]
            try:
                ck.verify(str(entry[0]))
            except FileNotFoundError:
                continue  # pruned between listing and reading: fine
            except ck.CheckpointError as exc:
                if published.exists():
                    raise AssertionError(f"incomplete replica visible: {published}: {exc}") from exc
        time.sleep(0.5)
    assert len(steps) >= 4, f"replicated steps over five checkpoint intervals: {sorted(steps)}"
    # The node's agent copies each checkpoint as it is written: the replica is never more than the checkpoint being
    # copied behind (with playbook rounds alone it fell two behind on this machine).
    assert max(lags) <= EVERY, f"lag in steps: {lags}"
    assert [i["workload"] for i in rwatcher.replicator.agent_plan("node1")] == [NAME]
    assert len(list(root.glob("step-*"))) <= 2  # keep: 2
    metrics = httpx.get(rwatcher.server.url + "/metrics").text
    assert f'spot_replica_step{{workload="{NAME}"}}' in metrics and "spot_replica_lag_seconds" in metrics
    # The next target holds GPUs for the workload (the pre-reservation migrate adopts).
    reservations = json.loads(rwatcher.reservation_file.read_text())
    assert reservations[f"replica/{NAME}"]["host"] == replica


def test_without_an_agent_the_replicate_playbook_copies_the_same_way(rfleet, rplay, rjob):
    """The watcher's fallback for nodes whose agent is not heard from: one copy per playbook round."""
    root = Path(rfleet.node("node3").paths["checkpoints"]) / ".spot-replicas-pb" / NAME
    item = {"source": "node1", "workload": NAME, "replica": "node3", "replica_root": str(root), "last_step": -1,
            "checkpoint_dir": str(Path(rfleet.node("node1").paths["checkpoints"]) / NAME)}
    rplay({"import_playbook": "spot.migration.replicate"}, extra_vars={"replicate_plan": [item], "keep": 2})
    first = json.loads((root / "latest.json").read_text())["step"]
    ck.verify(str(next(p for p in (root / f"step-{first}").iterdir() if not p.name.endswith(ck.MANIFEST_NAME))))
    wait_for(lambda: progress(rfleet, "node1").get("step", 0) > first + EVERY + 50, 60, "the next checkpoint")
    rplay({"import_playbook": "spot.migration.replicate"},
          extra_vars={"replicate_plan": [dict(item, last_step=first)], "keep": 2})
    assert json.loads((root / "latest.json").read_text())["step"] > first
    assert not list(root.glob(".incoming-*"))


def test_a_slow_node_is_not_declared_lost(rfleet, rwatcher):
    node = rfleet.node("node2")
    paused = [node.sshd_pid] + [pid for pid, ticks in fleet_mod.agent_pids(node)]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(GRACE * 0.6)  # slow: no heartbeats, probes time out, but for less than the grace period
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    time.sleep(GRACE * 0.8)  # past the point where it would have been declared lost had it stayed away
    assert "node2" not in rwatcher.ledger.lost_nodes()
    assert not [m for m in rwatcher.ledger.migrations() if m["source"] == "node2"]


def test_a_vanished_node_costs_at_most_one_checkpoint_interval_and_its_copy_never_runs_again(
        rfleet, rplay, rwatcher, rjob):
    # Take the node away, as abruptly as hardware loss, at a moment when the replica holds the newest checkpoint on the
    # node's disk and the next one is not due yet: then everything lost is what was trained since that checkpoint.
    replica_root = Path(row(rwatcher)["replica_root"])

    def newest_on_disk() -> int:
        steps = [int(p.name.split("-")[1].split(".")[0]) for p in
                 (Path(rfleet.node("node1").paths["checkpoints"]) / NAME).glob("step-*.safetensors")]
        return max(steps or [-1])

    def ready() -> bool:
        try:
            latest = json.loads((replica_root / "latest.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            return False
        return latest == newest_on_disk() and progress(rfleet, "node1").get("step", 0) < latest + EVERY * 0.6

    wait_for(ready, 180, "the replica to hold the newest checkpoint", interval=0.05)
    replicated = json.loads((replica_root / "latest.json").read_text())["step"]
    killed_at = time.time()
    fleet_mod.kill_node(rfleet.dir, "node1")
    last_trained = progress(rfleet, "node1").get("step")
    migration = wait_for(lambda: next((m for m in rwatcher.ledger.migrations() if m["source"] == "node1"
                                       and m["state"] in ("running", "failed")), None), GRACE + 120, "the recovery")
    assert migration["state"] == "running", (migration, rwatcher.log_path.read_text()[-3000:])
    assert rwatcher.ledger.notice(migration["notice_id"])["kind"] == "lost"
    assert migration["created_at"] - killed_at >= GRACE - 1  # not before the grace period
    target = migration["targets"][NAME]
    resumed = wait_for(lambda: progress(rfleet, target).get("resumed_from") is not None and progress(rfleet, target),
                       60, "the trainer resuming on the replica node")
    assert resumed["resumed_from"] >= replicated
    assert last_trained - resumed["resumed_from"] <= EVERY, (last_trained, resumed)
    assert [f["workload"] for f in rwatcher.ledger.fences("node1")] == [NAME]

    # The node comes back (a new boot; its agent starts again): the stale copy is fenced before anything else.
    fleet_mod.restart_node(rfleet.dir, "node1")
    rplay({"hosts": "node1", "gather_facts": False, "roles": [{
        "role": "spot.migration.eviction_agent", "eviction_agent_watcher_url": rwatcher.server.url,
        "eviction_agent_secret": rwatcher.agent_secret, "eviction_agent_runtimes": ["process"],
        "eviction_agent_service_manager": "background"}]})
    wait_for(lambda: all(f["applied_at"] for f in rwatcher.ledger.fences("node1")) and
             "node1" not in rwatcher.ledger.lost_nodes(), 60, "node1's stale copy to be fenced")
    before = progress(rfleet, "node1")
    attempt = rplay([{"spot.migration.workload": {
        "name": NAME, "runtime": "process", "gpus": 1, "checkpoint_dir": "{{ spot_checkpoint_root }}/" + NAME,
        "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
        "args": ["--checkpoint-dir", "{{ spot_checkpoint_root }}/" + NAME, "--step-time", "0.01"],
        "workload_root": "{{ spot_workload_root }}"}}], hosts="node1", check=False)
    assert attempt.returncode != 0 and "is fenced on this node" in attempt.stdout
    time.sleep(2)
    assert progress(rfleet, "node1") == before  # the stale copy never trained again
    assert progress(rfleet, target)["step"] > resumed["resumed_from"]  # the real one does
    rplay([{"spot.migration.workload": {"name": NAME, "runtime": "process", "state": "absent",
                                        "workload_root": "{{ spot_workload_root }}"}}], hosts="all")
