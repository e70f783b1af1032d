"""Jobs that span several nodes (gangs) on a local fleet: a real torch.distributed job (gloo on the nodes' loopback
addresses, CPU) deployed over two or three nodes, each member saving its own part with torch DCP; one member evicted
(the master too), or two at once: the gang saves together, stops everywhere, the evicted part moves to a replacement
and is verified there, and the gang runs again with the same world size and a new rendezvous, every rank's state
equal to what was saved."""

from __future__ import annotations

import json
import time

import pytest

from spot_migration import fleet as fleet_mod
from tests.helpers.fleet import own_fleet, play_runner, worker_base
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

    def make(name):
        made.append(Gang(gfleet, gplay, ansible_env, tmp_path, name))
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
