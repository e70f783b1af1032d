"""The watcher's intake of notices: an eviction opens one migration; an early warning (rebalance recommendation,
maintenance event) marks the node at risk and pre-stages - a replication round at once - and migrates only when
``warnings.migrate`` says so (the real ledger, metrics and alert memory; no fleet)."""

from __future__ import annotations

import pytest

from spot_migration.watch.config import load
from spot_migration.watch.intake import Intake
from spot_migration.watch.ledger import Ledger
from spot_migration.watch.metrics import Metrics

EVICT = {"notice_id": "aws-evict-node1", "provider": "aws", "kind": "spot_interruption", "evicting": True,
         "deadline": "2026-12-05T01:00:00Z"}
REBALANCE = {"notice_id": "aws-rebalance-node1", "provider": "aws", "kind": "rebalance", "evicting": False,
             "deadline": None}
MAINTENANCE = {"notice_id": "gcp-maint-node2", "provider": "gcp", "kind": "maintenance", "evicting": False,
               "deadline": None}


class Alerts:
    def __init__(self, ledger):
        self.ledger, self.sent = ledger, []

    def alert(self, key, text, **details):
        if self.ledger.claim_alert(key, {"text": text}):
            self.sent.append((key, text, details))


class Replicas:
    def __init__(self):
        self.prestaged = []

    def prestage(self, node, notice_id):
        self.prestaged.append((node, notice_id))


def intake(tmp_path, replicator=True, **warnings):
    (tmp_path / "inventory.yml").write_text("all: {}\n")
    config = load(None, inventory=str(tmp_path / "inventory.yml"), state_dir=str(tmp_path / "state"))
    for key, value in warnings.items():
        setattr(config.warnings, key, value)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    woken = []
    got = Intake(config, ledger, {"spot": ["node1", "node2"], "standby": ["standby1"],
                                  "all": ["node1", "node2", "standby1"]}, Metrics(), Alerts(ledger), b"x" * 32,
                 wake=lambda: woken.append(1), on_node_back=lambda *_: None, crash_if=lambda *_: None,
                 log=lambda *_: None, replicator=Replicas() if replicator else None)
    got.woken = woken
    return got


def test_an_eviction_opens_one_migration_and_prestages_nothing(tmp_path):
    i = intake(tmp_path)
    answer = i.on_notice("node1", EVICT, "push")
    assert answer["migration_id"] and i.woken and i.replicator.prestaged == []
    assert i.on_notice("node1", EVICT, "sweep") == {"accepted": True, "duplicate": True,
                                                    "migration_id": answer["migration_id"]}
    assert i.ledger.at_risk(i.config.warnings.kinds, i.config.warnings.hold) == {}


@pytest.mark.parametrize("notice, node", [(REBALANCE, "node1"), (MAINTENANCE, "node2")])
def test_an_early_warning_prestages_once_and_never_migrates(tmp_path, notice, node):
    i = intake(tmp_path)
    assert i.on_notice(node, notice, "push") == {"accepted": True, "duplicate": False, "migration_id": None}
    i.on_notice(node, notice, "sweep")  # the sweep sees it again: still once
    assert i.replicator.prestaged == [(node, notice["notice_id"])]
    assert i.ledger.migrations() == [] and not i.woken
    assert list(i.ledger.at_risk(i.config.warnings.kinds, i.config.warnings.hold)) == [node]
    ((key, text, details),) = i.alerter.sent
    assert key == f"warning:{notice['notice_id']}" and details["kind"] == "at_risk"
    assert f"{node} is at risk ({notice['provider']} {notice['kind']}" in text and "no migration" in text


def test_warnings_of_kinds_not_asked_for_and_on_nodes_not_watched_are_only_recorded(tmp_path):
    i = intake(tmp_path, kinds=["rebalance"])
    i.on_notice("node2", MAINTENANCE, "push")
    i.on_notice("standby1", dict(REBALANCE, notice_id="aws-rebalance-standby1"), "push")  # not a spot node
    assert i.replicator.prestaged == [] and i.alerter.sent == [] and i.ledger.migrations() == []
    assert len(i.ledger.notices()) == 2


def test_with_warnings_migrate_a_warning_moves_the_workloads(tmp_path):
    i = intake(tmp_path, migrate=True)
    answer = i.on_notice("node1", REBALANCE, "push")
    assert answer["migration_id"] and i.woken and i.replicator.prestaged == []
    (migration,) = i.ledger.migrations()
    assert migration["source"] == "node1" and migration["notice_id"] == REBALANCE["notice_id"]
    assert "migrating its workloads (warnings.migrate)" in i.alerter.sent[0][1]


@pytest.mark.parametrize("replicator, prestage, says", [
    (False, True, "nothing to pre-stage with replication off"),
    (True, False, "nothing pre-staged (warnings.prestage: false)"),
])
def test_without_replication_or_prestage_the_warning_says_what_it_did_not_do(tmp_path, replicator, prestage, says):
    i = intake(tmp_path, replicator=replicator, prestage=prestage)
    i.on_notice("node1", REBALANCE, "push")
    assert says in i.alerter.sent[0][1] and i.ledger.migrations() == []
    assert i.replicator is None or i.replicator.prestaged == []
