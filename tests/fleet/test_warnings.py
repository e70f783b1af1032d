"""Early warnings on a local fleet: an AWS rebalance recommendation on a node (the metadata simulator's document, read
by the watcher's real probe sweep over sshd) marks the node at risk and brings the replication round forward - the
newest checkpoint copied to a reserved target at once, long before the next scheduled round - and migrates nothing:
the trainer keeps running where it was."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from spot_migration import fleet as fleet_mod
from spot_migration.watch import views
from spot_migration.watch.app import Watcher
from spot_migration.watch.config import load
from tests.helpers.fleet import ansible_environ, free_port, own_fleet, play_runner, secret_file, wait_for, worker_base

NAME = "warned-train"


@pytest.fixture(scope="module")
def wfleet(tmp_path_factory):
    with own_fleet(tmp_path_factory.mktemp("warn-fleet"), nodes=2, standby=1, base_address=worker_base(240)) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def wplay(wfleet, ansible_env, tmp_path_factory):
    return play_runner(wfleet, ansible_env, tmp_path_factory.mktemp("warn-plays"))


@pytest.fixture(scope="module")
def wwatcher(wfleet, ansible_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("warn-watch")
    secret = secret_file(workdir)
    ansible_environ(ansible_env)
    config = load(None, inventory=str(wfleet.inventory_path), listen=f"127.0.0.1:{free_port()}",
                  state_dir=str(workdir / "state"), secret_file=str(secret), heartbeat_timeout=4.0)
    config.sweep.interval, config.sweep.timeout, config.sweep.hosts = 1.5, 3.0, "all"  # no agents: the sweep sees it
    # The next scheduled replication round is ten minutes away: only the warning can bring one now.
    config.replication.interval, config.replication.capacity_every = 600.0, 1
    config.lost.enabled = False
    log = open(workdir / "watch.log", "a")  # noqa: SIM115 - closed below
    watcher = Watcher(config, log=lambda msg: (log.write(time.strftime("%H:%M:%S ") + msg + "\n"), log.flush()))
    watcher.log_path = workdir / "watch.log"
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()
        log.close()


def progress(fleet) -> dict:
    try:
        return json.loads((Path(fleet.node("node1").paths["checkpoints"]) / NAME / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def row(watcher) -> dict:
    return next((w for w in watcher.ledger.workloads() if w["name"] == NAME), {})


def test_a_rebalance_recommendation_replicates_and_reserves_at_once_and_migrates_nothing(wfleet, wplay, wwatcher):
    ck_dir = "{{ spot_checkpoint_root }}/" + NAME
    wplay([{"spot.migration.workload": {
        "name": NAME, "runtime": "process", "gpus": 1, "checkpoint_dir": ck_dir,
        "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
        "args": ["--checkpoint-dir", ck_dir, "--step-time", "0.01", "--every", "200", "--keep", "2", "--size-mb", "2",
                 "--initial-checkpoint", "--progress", ck_dir + "/progress.json"],
        "workload_root": "{{ spot_workload_root }}"}},
        {"spot.migration.checkpoint_info": {"path": ck_dir, "wait_timeout": 30}}])
    pid = wait_for(lambda: progress(wfleet).get("pid"), 30, "the trainer's progress file")
    # Two sweeps without a warning: nothing replicated, nothing reserved (the round is ten minutes away).
    first = wait_for(lambda: wwatcher.sweeper.last_sweep.get("at"), 30, "a first sweep")
    wait_for(lambda: wwatcher.sweeper.last_sweep.get("at", 0) > first, 30, "a second sweep")
    assert row(wwatcher) == {} and not wwatcher.reservation_file.exists()

    fleet_mod.inject(wfleet.dir, "node1", "rebalance")
    try:
        noticed = wait_for(lambda: wwatcher.ledger.at_risk(["rebalance"], 3600), 30, "node1 at risk")
        assert list(noticed) == ["node1"] and noticed["node1"]["kind"] == "rebalance"
        replicated = wait_for(lambda: row(wwatcher).get("replica_step") is not None and row(wwatcher), 60,
                              "a replica after the warning")
        assert replicated["replica"] == "standby1", replicated
        reservations = json.loads(wwatcher.reservation_file.read_text())
        assert reservations[f"replica/{NAME}"]["host"] == "standby1"
        assert wwatcher.replicator.last_round["prestaged"] == ["node1"]
        # Nothing migrated: no migration in the ledger, the same trainer still training on node1.
        assert wwatcher.ledger.migrations() == []
        step = progress(wfleet).get("step", 0)
        wait_for(lambda: progress(wfleet).get("step", 0) > step, 20, "the trainer to go on")
        assert progress(wfleet)["pid"] == pid
        metrics = httpx.get(wwatcher.server.url + "/metrics").text
        assert "spot_at_risk_nodes 1.0" in metrics
        status = views.status_data(wwatcher.ledger, ["node1"], 4.0, None, wwatcher.config.warnings)
        assert status["nodes"][0]["at_risk"]["kind"] == "rebalance"
        assert "node1 is at risk (aws rebalance" in wwatcher.log_path.read_text()
    finally:
        fleet_mod.inject(wfleet.dir, "node1", "clear")
        wplay([{"spot.migration.workload": {"name": NAME, "state": "absent",
                                            "workload_root": "{{ spot_workload_root }}"}}])
