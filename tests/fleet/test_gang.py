"""Jobs that span several nodes (gangs) on a local fleet: a real torch.distributed job (gloo on the nodes' loopback
addresses, CPU) deployed over two or three nodes, each member saving its own part with torch DCP; one member evicted
(the master too), or two at once: the gang saves together, stops everywhere, the evicted part moves to a replacement
and is verified there, and the gang runs again with the same world size and a new rendezvous, every rank's state
equal to what was saved."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from spot_migration import fleet as fleet_mod
from spot_migration.watch.app import Watcher
from spot_migration.watch.config import load
from tests.helpers.fleet import (ansible_environ, free_port, install_agents, own_fleet, play_runner, secret_file,
                                 wait_for, worker_base)
from tests.helpers.gang import Gang


@pytest.fixture(scope="module")
def gfleet(tmp_path_factory):
    with own_fleet(tmp_path_factory.mktemp("gang-fleet"), nodes=6, standby=1, base_address=worker_base(30)) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def gplay(gfleet, ansible_env, tmp_path_factory):
    return play_runner(gfleet, ansible_env, tmp_path_factory.mktemp("gang-plays"))


@pytest.fixture
def gang_factory(gfleet, gplay, ansible_env, tmp_path):
    made = []

    def make(name, shared=None):
        made.append(Gang(gfleet, gplay, ansible_env, tmp_path, name, shared))
        return made[-1]
    yield make
    for gang in made:
        gang.cleanup()


def test_a_non_master_then_the_master_evicted_the_gang_carries_on(gfleet, gang_factory):
    gang = gang_factory("ddp")
    gang.deploy(["node1", "node2"])
    assert gang.running() == {"ddp.0": "node1", "ddp.1": "node2"}

    fleet_mod.inject(gfleet.dir, "node2", "spot_interruption")
    result = gang.migrate("node2")
    record = gang.record()
    [survivor, moved] = record["migrations"]
    assert (survivor["source"], survivor["target"], survivor["moved"]) == ("node1", "node1", False)
    assert (moved["source"], moved["target"], moved["moved"]) == ("node2", "standby1", True)
    assert all(m["outcome"] == "resumed" and m["first_new_step"] > record["step"] for m in record["migrations"])
    assert record["generation"] == 1 and "resumes from step" in result.stdout
    gang.check_resumed(record, ["node1", "standby1"])

    # Now the master: its replacement becomes the master, the rendezvous moves with it.
    fleet_mod.inject(gfleet.dir, "node1", "preempt")
    gang.migrate("node1")
    second = gang.record()
    assert second["id"] != record["id"] and second["step"] > record["step"]
    assert [(m["source"], m["target"]) for m in second["migrations"]] == [("node1", "node3"), ("standby1", "standby1")]
    assert second["generation"] == 2 and second["master_addr"] == gfleet.node("node3").address
    gang.check_resumed(second, ["node3", "standby1"])


def test_a_gang_on_shared_storage_moves_nothing_and_carries_on(gfleet, gang_factory, tmp_path):
    """``layout: shared``: the whole gang saves one DCP checkpoint in a directory every member mounts (here: one path
    on this machine); an evicted member's replacement resumes from it where it is, after one member sealed it."""
    gang = gang_factory("sddp", shared=tmp_path / "shared-ckpt")
    gang.deploy(["node1", "node2"])
    gang.migrate("node2")
    record = gang.record()
    assert [(m["source"], m["target"]) for m in record["migrations"]] == [("node1", "node1"), ("node2", "standby1")]
    assert not list(Path(gfleet.node("standby1").paths["checkpoints"]).glob(".spot-staging/*/*")), "nothing copied"
    assert (gang.shared / f"step-{record['step']:08d}.spot-manifest.json").exists() or \
        (gang.shared / f"step-{record['step']:08d}" / ".spot-manifest.json").exists()
    gang.check_resumed(record, ["node1", "standby1"])


def test_two_members_evicted_in_one_wave_are_one_migration(gfleet, gang_factory):
    gang = gang_factory("wave3")
    gang.deploy(["node1", "node2", "node3"])
    for host in ("node1", "node3"):
        fleet_mod.inject(gfleet.dir, host, "terminate")
    gang.migrate("node1", "node3")
    records = sorted(gang.records.glob("*.json"))
    assert len(records) == 1
    record = gang.record()
    hosts = [m["target"] for m in record["migrations"]]
    assert hosts[1] == "node2" and not {hosts[0], hosts[2]} & {"node1", "node2", "node3"}
    gang.check_resumed(record, hosts)


def test_no_replacement_stops_nothing(gfleet, gang_factory):
    gang = gang_factory("full")
    gang.deploy(["node1", "node2"])
    before = {r: gang.progress(h, r)["pid"] for r, h in enumerate(["node1", "node2"])}
    # Every GPU of every other node is promised to someone else: nowhere to go.
    gang.reservations.write_text(json.dumps({
        f"test/busy-{n.name}": {"host": n.name, "gpus": [0, 1], "expires": time.time() + 600, "created": time.time()}
        for n in gfleet.nodes if n.name not in ("node1", "node2")}))
    fleet_mod.inject(gfleet.dir, "node2", "spot_interruption")
    result = gang.migrate("node2", check=False)
    assert result.returncode != 0
    assert "no replacement for full.1" in result.stdout and "nothing was stopped" in result.stdout
    assert gang.running() == {"full.0": "node1", "full.1": "node2"}
    assert {r: gang.progress(h, r)["pid"] for r, h in enumerate(["node1", "node2"])} == before


def test_a_member_lost_without_a_notice_the_gang_restarts_from_the_replicas(ansible_env, tmp_path_factory):
    """Agents replicate every member's part; a member's node vanishes: once it is declared lost the gang restarts
    from the newest step both the survivor and the lost member's replica hold, the replica node in its place; the
    node that comes back has its copy fenced."""
    workdir = tmp_path_factory.mktemp("gang-lost")
    with own_fleet(workdir / "fleet", nodes=4, standby=1, base_address=worker_base(50)) as fleet:
        play = play_runner(fleet, ansible_env, workdir)
        secret = secret_file(workdir)
        ansible_environ(ansible_env)
        config = load(None, inventory=str(fleet.inventory_path), listen=f"127.0.0.1:{free_port()}",
                      state_dir=str(workdir / "state"), secret_file=str(secret), heartbeat_timeout=4.0)
        config.sweep.interval, config.sweep.timeout = 2.0, 3.0
        config.replication.interval, config.replication.capacity_every = 1.0, 5
        config.lost.grace = 8.0
        log = open(workdir / "watch.log", "a")  # noqa: SIM115 - closed below
        watcher = Watcher(config, log=lambda msg: (log.write(time.strftime("%H:%M:%S ") + msg + "\n"), log.flush()))
        install_agents(play, watcher.server.url, secret)
        watcher.start()
        gang = Gang(fleet, play, ansible_env, workdir, "lddp")
        try:
            gang.deploy(["node1", "node2"])

            def replicated():
                rows = [w for w in watcher.ledger.workloads() if w["name"].startswith("lddp.")]
                return rows if len(rows) == 2 and all(w["replica_step"] is not None for w in rows) else None
            rows = wait_for(replicated, 120, "both members replicated")
            lost_row = next(w for w in rows if w["name"] == "lddp.1")
            assert lost_row["replica"] not in ("node1", "node2"), "a member's replica is never on another member"
            fleet_mod.kill_node(fleet.dir, "node2")
            migration = wait_for(lambda: next((m for m in watcher.ledger.migrations() if m["source"] == "node2"
                                               and m["state"] in ("running", "failed")), None), 150, "the recovery")
            assert migration["state"] == "running", (migration, (workdir / "watch.log").read_text()[-4000:])
            record = json.loads((Path(config.state_dir) / "records" / f"{migration['id']}.lddp.json").read_text())
            hosts = [m["target"] for m in record["migrations"]]
            assert hosts[0] == "node1" and hosts[1] not in ("node1", "node2")
            gang.check_resumed(record, hosts)
            assert [f["workload"] for f in watcher.ledger.fences("node2")] == ["lddp.1"]

            # node2 comes back: its stale member is fenced before anything else, never trains again.
            fleet_mod.restart_node(fleet.dir, "node2")
            install_agents(play, watcher.server.url, secret, hosts="node2")
            wait_for(lambda: all(f["applied_at"] for f in watcher.ledger.fences("node2")), 60, "the fence applied")
            assert gang.running() == {"lddp.0": "node1", "lddp.1": hosts[1]}
        finally:
            gang.cleanup()
            watcher.stop()
            log.close()
