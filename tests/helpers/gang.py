"""A gang (a multi-node torch.distributed job, tests' own trainer spot_migration.gang_trainer) on a local fleet:
deploy it, run migrate_gang, look at its members and prove each resumed from its own part of the checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from spot_migration import fleet as fleet_mod
from spot_migration import gang_trainer
from tests.helpers.fleet import free_port, wait_for


class Gang:
    """Deploy a gang, run migrate_gang, look at its members; removes every member it made, on every node."""

    def __init__(self, fleet, play, env, tmp: Path, name: str, shared: Path | None = None):
        """``shared``: the gang's checkpoint in this one directory every member sees (``layout: shared``)."""
        self.fleet, self.play, self.env, self.tmp, self.name, self.shared = fleet, play, env, tmp, name, shared
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
        """The gang on ``hosts`` (member r on hosts[r]), training; it keeps its last 50 checkpoints, so the step a
        test compares is still there however long the test takes."""
        self.size = len(hosts)
        ck = str(self.shared) if self.shared else "{{ spot_checkpoint_root }}/" + self.name
        workload = {
            "name": self.name, "runtime": "process", "gpus": 1, "checkpoint_dir": ck,
            "command": [sys.executable, gang_trainer.__file__],  # torch: the test venv
            "args": ["--checkpoint-dir", ck, "--every", "40", "--keep", "50", "--step-time", "0.02",
                     "--dump-resumed", str(self.dumps(None)) if self.shared else "{{ spot_checkpoint_root }}/resumed-" + self.name],
            "workload_root": "{{ spot_workload_root }}",
            "gang": {"hosts": hosts, "master_port": free_port(), "layout": "shared" if self.shared else "member"}}
        self.playbook("deploy", "-e", json.dumps({"workload": workload}))
        for rank, host in enumerate(hosts):
            wait_for(lambda h=host, r=rank: (self.progress(h, r).get("step") or 0) > 0, 60, f"rank {rank} training")

    def migrate(self, *sources: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run migrate_gang, watching the fleet meanwhile (every 20 ms): never two copies of a member, never more
        members running than the gang has, never an old member running beside a new one."""
        seen: list[dict[str, str]] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                seen.append(self.processes())
                time.sleep(0.02)
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            result = self.playbook("migrate_gang", "-e", f"gang={self.name}", "-e",
                                   json.dumps({"source": list(sources)}), check=check)
        finally:
            done.set()
            thread.join()
        # Exactly one gang at any moment: an old member's process (the same pid on the same host) never alive beside
        # a new one, and never more members than the gang has.
        before = seen[0] if seen else {}
        for moment in seen:
            assert len(moment) <= self.size, moment
            old = {m for m, where in moment.items() if before.get(m) == where}
            new = set(moment) - old
            assert not (old and new), f"old members {sorted(old)} beside new ones {sorted(new)}: {moment}"
        self.moments = seen
        return result

    def progress(self, host: str, rank: int) -> dict:
        path = self.ckdir(host) / f"progress-rank{rank}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def dumps(self, host: str | None) -> Path:
        """Where the trainer on ``host`` writes what it loaded (beside the shared checkpoint: one place for all)."""
        if self.shared:
            return self.shared.parent / f"resumed-{self.name}"
        return Path(self.fleet.node(host).paths["checkpoints"]) / f"resumed-{self.name}"

    def ckdir(self, host: str) -> Path:
        """The gang's checkpoint directory as ``host`` sees it."""
        return self.shared or Path(self.fleet.node(host).paths["checkpoints"]) / self.name

    def processes(self) -> dict[str, tuple[str, int]]:
        """{member name: (host, pid)} of every member process alive on the fleet (any node, any member)."""
        found = {}
        for node in self.fleet.nodes:
            for pidfile in Path(node.paths["workloads"]).glob(f"{self.name}.*/workload.pid"):
                try:
                    info = json.loads(pidfile.read_text())
                except (OSError, ValueError):
                    continue  # written or removed right now
                if fleet_mod._alive(info["pid"], info.get("start_ticks")):
                    assert pidfile.parent.name not in found, f"{pidfile.parent.name} runs twice"
                    found[pidfile.parent.name] = (node.name, info["pid"])
        return found

    def running(self) -> dict[str, str]:
        """{member name: host} of every member process alive on the fleet."""
        return {name: host for name, (host, _pid) in self.processes().items()}

    def record(self) -> dict:
        return json.loads(sorted(self.records.glob("*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text())

    def check_resumed(self, record: dict, hosts: list[str]) -> None:
        """Every member runs where the record says, resumed from the gang's step with the new rendezvous, its state
        equal to its part of the checkpoint (its own rank's tensors included)."""
        step = record["step"]
        assert self.running() == {f"{self.name}.{r}": h for r, h in enumerate(hosts)}
        master = self.fleet.node(hosts[0]).address
        for rank, host in enumerate(hosts):

            def past(h=host, r=rank):
                seen = self.progress(h, r)
                return seen if seen.get("resumed_from") == step and seen.get("step", 0) > step else None
            now = wait_for(past, 60, f"rank {rank} past step {step} on {host}")
            assert now["world_size"] == self.size and now["master"] == master
            assert now["generation"] == str(record["generation"])
            part = self.ckdir(host) / f"step-{step:08d}"
            flat = self.tmp / f"part-{host}-{step}.pt"
            dcp_to_torch_save(str(part), str(flat))
            saved = torch.load(flat, weights_only=False)
            dumped = self.dumps(host) / f"resumed-rank{rank}.pt"
            loaded = torch.load(dumped, weights_only=False)
            assert int(saved["step"].item()) == step == int(loaded["step"].item())
            for key in ("weight", "bias"):
                assert torch.equal(saved["model"][key], loaded["model"][key]), key
            assert torch.equal(saved[f"rank{rank}"]["position"], loaded[f"rank{rank}"]["position"])
            ranks = sorted(k for k in saved if k.startswith("rank"))
            assert ranks == ([f"rank{r}" for r in range(self.size)] if self.shared else [f"rank{rank}"]), \
                "a member holds only its own ranks, the shared checkpoint every rank"

    def cleanup(self):
        for rank in range(max(self.size, 3)):
            absent = {"name": f"{self.name}.{rank}", "runtime": "process", "state": "absent",
                      "workload_root": "{{ spot_workload_root }}", "stop_timeout": 5}
            self.play({"hosts": "all", "gather_facts": False, "tasks": [{"spot.migration.workload": absent}]},
                      check=False)
        for node in self.fleet.nodes:
            fleet_mod.inject(self.fleet.dir, node.name, "clear")
            # A later gang of the same name must not find these steps (a trainer keeps the highest-numbered ones).
            for path in (Path(node.paths["checkpoints"]) / self.name, Path(node.paths["checkpoints"]) / f"resumed-{self.name}"):
                shutil.rmtree(path, ignore_errors=True)
        if self.shared:
            shutil.rmtree(self.shared, ignore_errors=True)
            shutil.rmtree(self.dumps(None), ignore_errors=True)
