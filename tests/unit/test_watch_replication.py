"""The watcher's side of replication by the agents: which workloads go to an agent and which to the playbook, what the
agent is told, and what its heartbeats record (the real ledger and metrics; no fleet)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from spot_migration.watch.config import load
from spot_migration.watch.ledger import Ledger
from spot_migration.watch.metrics import Metrics
from spot_migration.watch.replication import Replicator

SPEC = {"checkpoint_dir": "/data/ckpt/job", "gpus": [0]}


@pytest.fixture
def replicator(tmp_path):
    (tmp_path / "inventory.yml").write_text("all: {}\n")
    config = load(None, inventory=str(tmp_path / "inventory.yml"), state_dir=str(tmp_path / "state"),
                  secret_file=str(tmp_path / "secret"))
    logged: list[str] = []
    watcher = SimpleNamespace(config=config, ledger=Ledger(tmp_path / "ledger.db"), metrics=Metrics(), log=logged.append,
                              groups={"spot": ["node1", "node2"], "standby": ["standby1"], "all": []}, active={},
                              reservation_file=tmp_path / "reservations.json", logged=logged)
    rep = Replicator(config, watcher.ledger, None, watcher.groups, watcher.reservation_file, watcher.metrics,
                     logged.append, threading.Event(), busy=lambda: False)
    rep.access = {
        "node1": {"host": "10.0.0.1", "port": "22", "root": "/data/ckpt", "ssh_config": "/etc/spot/ssh_config",
                  "python": "/usr/bin/python3"},
        "node2": {"host": "10.0.0.2", "port": "2222", "root": "/data/ckpt", "ssh_config": "", "python": "auto_silent"},
        "standby1": {"host": "10.0.0.9", "port": "2200", "root": "/srv/ckpt", "ssh_config": "",
                     "python": "/opt/py/bin/python3"},
    }
    for name, node in (("job", "node1"), ("other", "node2")):
        watcher.ledger.workload_seen(name, node, SPEC, 1)
        watcher.ledger.set_replica(name, "standby1", [0])
    rep.logged = logged
    return rep


def plan(rep):
    return [{"source": w["node"], "workload": w["name"], "checkpoint_dir": SPEC["checkpoint_dir"], "replica": w["replica"],
             "last_step": -1, "link_dest": False} for w in rep.ledger.workloads()]


def heartbeat(node, version="1.1.0", capabilities=("replicate",), replicas=(), interval=5.0):
    return {"type": "heartbeat", "node": node, "agent_version": version, "capabilities": list(capabilities),
            "replicas": list(replicas), "heartbeat_interval": interval}


def test_only_workloads_on_nodes_whose_agent_replicates_go_to_the_agent(replicator):
    replicator.agent_report("node1", heartbeat("node1"))
    replicator.agent_report("node2", heartbeat("node2", version="1.0.0", capabilities=()))  # an older agent
    rest = replicator._hand_to_agents(plan(replicator))
    assert [i["workload"] for i in rest] == ["other"]  # the playbook does node2's
    (item,) = replicator.agent_plan("node1")
    assert item == {"workload": "job", "replica": "standby1", "checkpoint_dir": "/data/ckpt/job", "host": "10.0.0.9",
                    "ssh": ["ssh", "-o", "BatchMode=yes", "-F", "/etc/spot/ssh_config"], "python": "/opt/py/bin/python3",
                    "root": "/srv/ckpt/.spot-replicas/job", "keep": 2, "bwlimit": 0, "last_step": -1}
    assert replicator.agent_plan("node2") == []


def test_a_silent_agent_loses_its_plan_to_the_playbook(replicator, monkeypatch):
    replicator.watch_config.heartbeat_timeout = 4.0  # shorter than the agent's interval: three intervals count then
    replicator.agent_report("node1", heartbeat("node1", interval=5.0))
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 14)  # between two heartbeats, late ones included: still the agent's
    assert [i["workload"] for i in replicator._hand_to_agents(plan(replicator))] == ["other"]
    monkeypatch.setattr(time, "time", lambda: now + 16)
    rest = replicator._hand_to_agents(plan(replicator))
    assert sorted(i["workload"] for i in rest) == ["job", "other"] and replicator.agent_plan("node1") == []


def test_an_inventory_that_does_not_say_how_to_reach_the_replica_keeps_the_playbook(replicator):
    replicator.agent_report("node2", heartbeat("node2"))
    del replicator.access["standby1"]
    assert len(replicator._hand_to_agents(plan(replicator))) == 2


def test_reported_replicas_are_recorded_once_and_old_plans_ignored(replicator):
    now = time.time()
    report = {"workload": "job", "replica": "standby1", "replica_root": "/srv/ckpt/.spot-replicas/job", "step": 800,
              "source_step": 800, "source_mtime": now - 2, "replica_mtime": now - 2, "bytes": 4096, "error": None,
              "replicated_at": now - 1, "seconds": 0.8}
    replicator.agent_report("node1", heartbeat("node1", replicas=[report]))
    replicator.agent_report("node1", heartbeat("node1", replicas=[report]))  # the next heartbeat says it again
    row = next(w for w in replicator.ledger.workloads() if w["name"] == "job")
    assert (row["replica_step"], row["replica_root"], row["replica_bytes"]) == (800, report["replica_root"], 4096)
    assert row["replicated_at"] == pytest.approx(now - 1)
    copied = replicator.metrics.replications.labels("copied")._value.get()
    assert copied == 1
    # A report about another replica node (an old plan) changes nothing; a failure is logged once.
    replicator.agent_report("node1", heartbeat("node1", replicas=[dict(report, replica="node2", step=1600)]))
    failed = dict(report, source_step=1600, error="copy of step 1600 to 10.0.0.9 failed (rsync exit 12)")
    replicator.agent_report("node1", heartbeat("node1", replicas=[failed]))
    replicator.agent_report("node1", heartbeat("node1", replicas=[failed]))
    row = next(w for w in replicator.ledger.workloads() if w["name"] == "job")
    assert row["replica_step"] == 800 and row["source_step"] == 1600 and "rsync exit 12" in row["error"]
    assert sum("rsync exit 12" in line for line in replicator.logged) == 1


class Plays:
    """Stands in for the watcher's ansible-runner (``Actions.run``): records what a round runs, answers nothing."""

    def __init__(self):
        self.runs = []

    def run(self, name, plays, extravars=None, on_event=None, forks=None, control_dir=None):
        self.runs.append((name, [p["name"] for p in plays] if isinstance(plays, list) else plays))
        return 1, None


def scans(rep):
    """The plays of each run that asked the nodes what runs and which GPUs are free."""
    return [plays for name, plays in rep.actions.runs if name.startswith("replicate-scan-")]


REBALANCE = {"notice_id": "aws-rebalance-node1", "provider": "aws", "kind": "rebalance", "evicting": False,
             "deadline": None}


def test_an_early_warning_brings_the_next_round_forward_with_a_fresh_look(replicator):
    replicator.actions = Plays()
    replicator.capacity = {"standby1": {"host": "standby1", "free_gpus": [0, 1],
                                        "gpus": [{"index": 0, "memory_free_mb": 80000}, {"index": 1, "memory_free_mb": 80000}],
                                        "lifecycle": "on-demand", "evicting": False, "blind": False, "error": None}}
    replicator.rounds = 1  # mid-cycle: a plain round asks the nodes nothing (capacity_every rounds)
    replicator.round_once()
    assert scans(replicator) == [] and replicator.last_round["prestaged"] == []
    replicator.config.interval = 600.0
    started = time.monotonic()
    waiter = threading.Thread(target=lambda: replicator._due() and replicator.round_once())
    waiter.start()
    replicator.prestage("node1", "aws-rebalance-node1")
    waiter.join(10)
    assert not waiter.is_alive() and time.monotonic() - started < 5, "the round did not come at once"
    # What runs on the node at risk and the GPUs everywhere, asked now; the node is taken once.
    assert scans(replicator) == [["Workloads", "Capacity"]]
    assert replicator.last_round["prestaged"] == ["node1"] and replicator.urgent == {}
    assert any("pre-staging for node1 (at risk)" in line for line in replicator.logged)


def test_an_urgent_node_waits_for_migrations_in_flight_and_is_not_forgotten(replicator):
    replicator.actions = Plays()
    replicator.busy = lambda: True
    replicator.prestage("node1", "aws-rebalance-node1")
    assert replicator.round_once() == {"skipped": "migrations in flight", "at": replicator.last_round["at"]}
    assert replicator.urgent == {"node1": "aws-rebalance-node1"} and replicator.actions.runs == []
    replicator.busy = lambda: False
    replicator.round_once()
    assert replicator.last_round["prestaged"] == ["node1"]


def test_a_node_at_risk_is_never_made_the_next_target(replicator):
    free = {"free_gpus": [0], "gpus": [{"index": 0, "memory_free_mb": 80000}], "evicting": False, "blind": False, "error": None}
    replicator.capacity = {"node2": dict(free, host="node2", lifecycle="spot")}
    replicator.ledger.set_replica("job", None)
    replicator.ledger.record_notice("node2", dict(REBALANCE, notice_id="aws-rebalance-node2"), "push", time.time())
    plan_items = replicator._assign_and_plan()
    assert "job" not in [i["workload"] for i in plan_items]
    assert any("no replica node for job" in line for line in replicator.logged)
    # The warning over (older than warnings.hold): node2 may hold the replica again.
    replicator.watch_config.warnings.hold = 0.001
    time.sleep(0.01)
    assert [i["replica"] for i in replicator._assign_and_plan() if i["workload"] == "job"] == ["node2"]
