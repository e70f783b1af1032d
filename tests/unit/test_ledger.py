"""The watcher's ledger: notices once, one migration per notice and source, a forward-only state machine,
fencing between watchers, replay and alert memory that survive restarts."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from spot_migration.watch.ledger import STATES, Fenced, Ledger, LedgerError

NOTICE = {"notice_id": "aws-1", "provider": "aws", "kind": "spot_interruption", "evicting": True, "deadline": None}


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def path(tmp_path):
    return tmp_path / "ledger.sqlite"


def test_notices_are_stored_once_and_deliveries_counted(path):
    ledger = Ledger(path)
    assert ledger.record_notice("node1", NOTICE, "push", 1.0)[0] is True
    for via in ("push", "sweep", "push"):
        new, row = ledger.record_notice("node1", NOTICE, via, 2.0)
        assert new is False and row["first_via"] == "push"
    assert ledger.notices()[0]["deliveries"] == 4
    with pytest.raises(LedgerError, match="no notice_id"):
        ledger.record_notice("node1", {"kind": "preempt"}, "push", 1.0)


def test_one_open_migration_per_source(path):
    ledger = Ledger(path)
    ledger.record_notice("node1", NOTICE, "push", 1.0)
    ledger.record_notice("node1", dict(NOTICE, notice_id="aws-2"), "sweep", 1.0)
    created, first = ledger.open_migration("aws-1", "node1", 1.0, 1.0)
    assert created
    assert ledger.open_migration("aws-1", "node1", 1.0, 1.0) == (False, first)
    assert ledger.open_migration("aws-2", "node1", 1.0, 1.0) == (False, first)
    fence = ledger.claim(first)
    ledger.advance(first, fence, "running")
    ledger.record_notice("node1", dict(NOTICE, notice_id="aws-3"), "push", 5.0)
    created, second = ledger.open_migration("aws-3", "node1", 5.0, 5.0)
    assert created and second != first


def test_states_only_move_forward_and_fields_merge(path):
    ledger = Ledger(path)
    ledger.record_notice("node1", NOTICE, "push", 1.0)
    mid = ledger.open_migration("aws-1", "node1", 1.0, 1.0)[1]
    fence = ledger.claim(mid)
    assert ledger.advance(mid, fence, "checkpointing", workloads=["a"])
    assert ledger.advance(mid, fence, "target_reserved", targets={"a": "standby1"})
    assert not ledger.advance(mid, fence, "checkpointed", workloads=["b", "a"], steps={"a": 40})
    m = ledger.migration(mid)
    assert (m["state"], m["workloads"], m["targets"], m["steps"]) == ("target_reserved", ["a", "b"], {"a": "standby1"},
                                                                      {"a": 40})
    with pytest.raises(LedgerError, match="unknown migration state"):
        ledger.advance(mid, fence, "teleported")
    assert ledger.advance(mid, fence, "failed", error="no capacity")
    with pytest.raises(LedgerError, match="already failed"):
        ledger.advance(mid, fence, "running")
    assert [t["state"] for t in ledger.transitions(mid)] == ["noticed", "noticed", "checkpointing", "target_reserved",
                                                             "failed"]
    assert set(STATES) >= {t["state"] for t in ledger.transitions(mid)}


def test_fencing_between_two_watchers(path):
    clock = Clock()
    first, second = Ledger(path, owner="w1", clock=clock), Ledger(path, owner="w2", clock=clock)
    first.record_notice("node1", NOTICE, "push", 1.0)
    mid = first.open_migration("aws-1", "node1", 1.0, 1.0)[1]
    fence1 = first.claim(mid)
    assert second.claimable() == []
    with pytest.raises(Fenced, match="held by w1"):
        second.claim(mid)
    clock.now += 10
    first.renew(mid, fence1)
    clock.now += 10
    with pytest.raises(Fenced):
        second.claim(mid)
    clock.now += 20  # w1 stopped renewing: its lease ran out
    assert [m["id"] for m in second.claimable()] == [mid]
    fence2 = second.claim(mid)
    assert fence2 == fence1 + 1
    with pytest.raises(Fenced, match="stale"):
        first.advance(mid, fence1, "checkpointing")
    with pytest.raises(Fenced):
        first.renew(mid, fence1)
    assert second.advance(mid, fence2, "checkpointing")


def test_a_dead_watcher_on_this_host_holds_nothing(path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    ledger = Ledger(path, owner="gone")
    ledger.pid, ledger.ticks = dead.pid, "12345"
    ledger.record_notice("node1", NOTICE, "push", 1.0)
    mid = ledger.open_migration("aws-1", "node1", 1.0, 1.0)[1]
    ledger.claim(mid)
    restarted = Ledger(path, owner="new")
    assert [m["id"] for m in restarted.claimable()] == [mid]
    assert restarted.claim(mid) == 2


def test_claims_race_one_winner(path):
    Ledger(path).record_notice("node1", NOTICE, "push", 1.0)
    mid = Ledger(path).open_migration("aws-1", "node1", 1.0, 1.0)[1]
    results = []

    def claim(owner):
        try:
            results.append((owner, Ledger(path, owner=owner).claim(mid)))
        except Fenced:
            results.append((owner, None))

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for owner, fence in results if fence) == 1


def test_evicting_nodes_are_the_recent_evicting_notices(path):
    clock = Clock()
    ledger = Ledger(path, clock=clock)
    ledger.record_notice("node1", NOTICE, "push", clock.now - 700)
    ledger.record_notice("node2", dict(NOTICE, notice_id="aws-2"), "push", clock.now - 10)
    ledger.record_notice("node3", dict(NOTICE, notice_id="aws-3", kind="rebalance", evicting=False), "push", clock.now)
    assert ledger.evicting_nodes() == ["node2"]


def test_nodes_at_risk_are_the_recent_warnings_of_the_kinds_asked_for(path):
    clock = Clock()
    ledger = Ledger(path, clock=clock)
    warning = dict(NOTICE, kind="rebalance", evicting=False)
    ledger.record_notice("node1", dict(warning, notice_id="aws-r1"), "push", clock.now - 4000)  # older than the hold
    ledger.record_notice("node2", dict(warning, notice_id="aws-r2"), "sweep", clock.now - 10)
    ledger.record_notice("node3", dict(warning, notice_id="gcp-m3", provider="gcp", kind="maintenance"), "push",
                         clock.now - 5)
    ledger.record_notice("node4", NOTICE, "push", clock.now)  # an eviction is not a warning
    assert ledger.at_risk(["rebalance", "maintenance"], 3600) == {
        "node2": {"notice_id": "aws-r2", "kind": "rebalance", "provider": "aws", "since": clock.now - 10},
        "node3": {"notice_id": "gcp-m3", "kind": "maintenance", "provider": "gcp", "since": clock.now - 5}}
    assert list(ledger.at_risk(["maintenance"], 3600)) == ["node3"]
    assert ledger.at_risk([], 3600) == {}
    clock.now += 3600
    assert ledger.at_risk(["rebalance", "maintenance"], 3600) == {}


def test_nonces_and_alerts_survive_a_restart(path):
    clock = Clock()
    ledger = Ledger(path, clock=clock)
    assert ledger.seen_nonce("n1", 1000.0) is False
    assert ledger.claim_alert("migration:x:running", {"text": "moved"}) is True
    restarted = Ledger(path, clock=clock)
    assert restarted.seen_nonce("n1", 1000.0) is True
    assert restarted.claim_alert("migration:x:running", {"text": "moved"}) is False
    clock.now += 601  # beyond twice the signature window: forgotten (a stale push is refused anyway)
    assert restarted.seen_nonce("n2", 1601.0) is False
    assert restarted.seen_nonce("n1", 1601.0) is False


def test_heartbeats_track_blind_episodes(path):
    clock = Clock()
    ledger = Ledger(path, clock=clock)
    assert ledger.heartbeat("node1", "agent", False) == (False, False)
    clock.now += 5
    assert ledger.heartbeat("node1", "agent", True, error="HTTP 500") == (False, True)
    since = ledger.nodes()[0]["blind_since"]
    clock.now += 5
    assert ledger.heartbeat("node1", "sweep", True, error="HTTP 500") == (True, True)
    assert ledger.nodes()[0]["blind_since"] == since
    assert ledger.heartbeat("node1", "agent", False) == (True, False)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_a_moved_workload_is_found_where_it_runs_and_its_replica_forgotten(path):
    ledger = Ledger(path, owner="w1", clock=Clock())
    ledger.workload_seen("job", "node1", {"name": "job"}, 1)
    ledger.set_replica("job", "node2", [0])
    assert ledger.workload_moved("job", "node3") is True
    [row] = ledger.workloads()
    assert row["node"] == "node3" and row["replica"] is None and row["spec"] == {"name": "job"}
    assert ledger.workload_moved("job", "node3") is False       # already there: nothing changes
    assert ledger.workload_moved("unknown", "node3") is False   # never listed: not invented
    assert [w["name"] for w in ledger.workloads(node="node3")] == ["job"]


def test_the_runner_passes_the_nodes_at_risk_to_the_playbook_but_not_its_sources(path):
    from spot_migration.watch.config import WatchConfig
    from spot_migration.watch.runner import MigrationRunner

    clock = Clock()
    ledger = Ledger(path, clock=clock)
    warning = dict(NOTICE, kind="rebalance", evicting=False)
    for node in ("node1", "node2", "standby1"):
        ledger.record_notice(node, dict(warning, notice_id=f"aws-r-{node}"), "push", clock.now - 5)
    runner = object.__new__(MigrationRunner)  # only what _add_at_risk reads
    runner.config, runner.ledger = WatchConfig(), ledger
    extravars: dict = {}
    runner._add_at_risk(extravars, {"node1"})
    assert extravars == {"at_risk_hosts": ["node2", "standby1"]}
    runner.config.warnings.kinds = []
    quiet: dict = {}
    runner._add_at_risk(quiet, set())
    assert quiet == {}
