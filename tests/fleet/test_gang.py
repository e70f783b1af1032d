"""Jobs that span several nodes (gangs) on a local fleet: a real torch.distributed job (gloo on the nodes' loopback
addresses, CPU) deployed over two or three nodes, each member saving its own part with torch DCP; one member evicted
(the master too), or two at once: the gang saves together, stops everywhere, the evicted part moves to a replacement
and is verified there, and the gang runs again with the same world size and a new rendezvous, every rank's state
equal to what was saved."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from spot_migration import fleet as fleet_mod
from spot_migration import gang_trainer
from tests.helpers.fleet import free_port, own_fleet, play_runner, wait_for, worker_base


@pytest.fixture(scope="module")
def gfleet(tmp_path_factory):
    with own_fleet(tmp_path_factory.mktemp("gang-fleet"), nodes=6, standby=1, base_address=worker_base(30)) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def gplay(gfleet, ansible_env, tmp_path_factory):
    return play_runner(gfleet, ansible_env, tmp_path_factory.mktemp("gang-plays"))


class Gang:
    """Deploy a gang, run migrate_gang, look at its members; removes every member it made, on every node."""

    def __init__(self, fleet, play, env, tmp: Path, name: str):
        self.fleet, self.play, self.env, self.tmp, self.name = fleet, play, env, tmp, name
        self.records = tmp / "records"
        self.reservations = tmp / "reservations.json"
        self.size = 0

    def playbook(self, name: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(self.fleet.inventory_path),
               f"spot.migration.{name}", "-e", f"spot_record_dir={self.records}",
               "-e", f"spot_reservation_file={self.reservations}", *extra]
        result = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=300, check=False)
        if check:
            assert result.returncode == 0, result.stdout[-8000:]
        return result

    def deploy(self, hosts: list[str]) -> None:
        self.size = len(hosts)
        ck = "{{ spot_checkpoint_root }}/" + self.name
        workload = {
            "name": self.name, "runtime": "process", "gpus": 1, "checkpoint_dir": ck,
            "command": [sys.executable, gang_trainer.__file__],  # torch: the test venv
            "args": ["--checkpoint-dir", ck, "--every", "40", "--keep", "3", "--step-time", "0.02",
                     "--dump-resumed", "{{ spot_checkpoint_root }}/resumed-" + self.name],
            "workload_root": "{{ spot_workload_root }}",
            "gang": {"hosts": hosts, "master_port": free_port()}}
        self.playbook("deploy", "-e", json.dumps({"workload": workload}))
        for rank, host in enumerate(hosts):
            wait_for(lambda h=host, r=rank: (self.progress(h, r).get("step") or 0) > 0, 60, f"rank {rank} training")

    def migrate(self, *sources: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.playbook("migrate_gang", "-e", f"gang={self.name}", "-e", json.dumps({"source": list(sources)}),
                             check=check)

    def progress(self, host: str, rank: int) -> dict:
        path = Path(self.fleet.node(host).paths["checkpoints"]) / self.name / f"progress-rank{rank}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def running(self) -> dict[str, str]:
        """{member name: host} of every member process alive on the fleet (any node, any member)."""
        found = {}
        for node in self.fleet.nodes:
            for pidfile in Path(node.paths["workloads"]).glob(f"{self.name}.*/workload.pid"):
                info = json.loads(pidfile.read_text())
                if fleet_mod._alive(info["pid"], info.get("start_ticks")):
                    assert pidfile.parent.name not in found, f"{pidfile.parent.name} runs twice"
                    found[pidfile.parent.name] = node.name
        return found

    def record(self) -> dict:
        return json.loads(sorted(self.records.glob("*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text())

    def check_resumed(self, record: dict, hosts: list[str]) -> None:
        """Every member runs where the record says, resumed from the gang's step with the new rendezvous, its state
        equal to its part of the checkpoint (its own rank's tensors included)."""
        step = record["step"]
        assert self.running() == {f"{self.name}.{r}": h for r, h in enumerate(hosts)}
        master = self.fleet.node(hosts[0]).address
        for rank, host in enumerate(hosts):
            now = wait_for(lambda h=host, r=rank: (lambda p: p if (p.get("resumed_from") == step
                                                                   and p.get("step", 0) > step) else None)(
                self.progress(h, r)), 60, f"rank {rank} past step {step} on {host}")
            assert now["world_size"] == self.size and now["master"] == master
            assert now["generation"] == str(record["generation"])
            part = Path(self.fleet.node(host).paths["checkpoints"]) / self.name / f"step-{step:08d}"
            flat = self.tmp / f"part-{host}-{step}.pt"
            dcp_to_torch_save(str(part), str(flat))
            saved = torch.load(flat, weights_only=False)
            dumped = Path(self.fleet.node(host).paths["checkpoints"]) / f"resumed-{self.name}" / f"resumed-rank{rank}.pt"
            loaded = torch.load(dumped, weights_only=False)
            assert int(saved["step"].item()) == step == int(loaded["step"].item())
            for key in ("weight", "bias"):
                assert torch.equal(saved["model"][key], loaded["model"][key]), key
            assert torch.equal(saved[f"rank{rank}"]["position"], loaded[f"rank{rank}"]["position"])
            assert [k for k in saved if k.startswith("rank")] == [f"rank{rank}"], "a member holds only its own ranks"

    def cleanup(self):
        for rank in range(max(self.size, 3)):
            absent = {"name": f"{self.name}.{rank}", "runtime": "process", "state": "absent",
                      "workload_root": "{{ spot_workload_root }}", "stop_timeout": 5}
            self.play({"hosts": "all", "gather_facts": False, "tasks": [{"spot.migration.workload": absent}]},
                      check=False)
        for node in self.fleet.nodes:
            fleet_mod.inject(self.fleet.dir, node.name, "clear")


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
