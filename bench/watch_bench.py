"""Benchmark for issue [E]: how fast a notice reaches the workload and the watcher, with agents, with the probe
sweep only, and with a cron-every-30-s baseline; 8 simultaneous evictions against one; probe sweep time for
8, 16 and 32 nodes. All on local fleets (real sshd, real agents, real watcher, real ansible-runner).

Run: .venv/bin/python bench/watch_bench.py [--notices 50] [--skip-eight] [--skip-sweep] [--out DIR]
Prints the figures and writes OUT/watch.json (default bench/out). Not a test: it asserts nothing.

* agents: the eviction agent on each spot node (1 s polls; GCP hanging GET), the watcher with migrations off
  (observe-only), the sweep off. "visible" is the simulator's own time of the injection; after a GCP preemption
  the node gets a new boot id (a preempted VM must be started again before it can be preempted again). "signalled" is when the
  agent sent SIGUSR1 to the node's trainer; "watcher" is when the watcher stored the pushed notice.
* sweep only: agents stopped, the watcher's fallback sweep of all spot nodes every 15 s (its default).
* cron 30 s: modelled, not run: each notice waits a uniform 0-30 s for the next cron tick (seeded), plus the
  measured duration of one `ansible-playbook spot.migration.probe` over the same nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from spot_migration import collections_path  # noqa: E402
from spot_migration import fleet as fleet_mod  # noqa: E402
from spot_migration.watch import actions as actions_mod  # noqa: E402

BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path()), ANSIBLE_NOCOLOR="1",
                ANSIBLE_PIPELINING="true", PATH=f"{BIN}:{os.environ['PATH']}",
                CONTAINERS_CONF=str(fleet_mod.CONTAINERS_CONF))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 3)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": pct(values, 50), "p95_s": pct(values, 95),
            "max_s": round(max(values), 3) if values else None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_fleet(directory: Path, **kwargs):
    """A local fleet for one part of the benchmark, always taken down."""
    fleet = fleet_mod.up(directory, image=False, log=lambda *_: None, **kwargs)
    try:
        yield fleet
    finally:
        fleet_mod.down(fleet.dir, log=lambda *_: None)


def make_secret(path: Path) -> tuple[str, Path]:
    secret = secrets.token_hex(32)
    path.write_text(secret)
    path.chmod(0o600)
    return secret, path


def play(fleet, play_dict: dict) -> None:
    path = Path(fleet.dir) / f"bench-{time.monotonic_ns()}.json"
    path.write_text(json.dumps([play_dict]))
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(fleet.inventory_path), str(path)], env=env(),
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(result.stdout[-3000:])


def agents(fleet, port: int, secret: str, state: str = "started", hosts: str = "spot") -> None:
    play(fleet, {"hosts": hosts, "gather_facts": False, "roles": [{
        "role": "spot.migration.eviction_agent", "eviction_agent_watcher_url": f"http://127.0.0.1:{port}",
        "eviction_agent_secret": secret, "eviction_agent_runtimes": ["process"], "eviction_agent_state": state}]})


def deploy(fleet, hosts: str, name: str, extra: list[str], per_host: bool = True, progress: bool = False,
           wait_timeout: float = 30) -> None:
    """The reference trainer on each host, named NAME-HOST (job names are unique across a fleet; ``per_host`` False:
    NAME, for one host); ``progress`` writes <checkpoint dir>/progress.json. Returns once it has a checkpoint."""
    name = name + "-{{ inventory_hostname }}" if per_host else name
    ck = "{{ spot_checkpoint_root }}/" + name
    args = ["--checkpoint-dir", ck, "--step-time", "0.01"] + (["--progress", ck + "/progress.json"] if progress else [])
    play(fleet, {"hosts": hosts, "gather_facts": False, "tasks": [
        {"spot.migration.workload": {"name": name, "runtime": "process", "gpus": 1,
                                     "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
                                     "args": [*args, *extra],
                                     "checkpoint_dir": ck, "workload_root": "{{ spot_workload_root }}"}},
        {"spot.migration.checkpoint_info": {"path": ck, "wait_timeout": wait_timeout}}]})


class Watcher:
    def __init__(self, fleet, workdir: Path, port: int, secret_file: Path, **config):
        self.state = workdir / f"watch-{time.monotonic_ns()}"
        self.state.mkdir(parents=True)
        cfg = {"inventory": str(fleet.inventory_path), "listen": f"127.0.0.1:{port}", "state_dir": str(self.state),
               "secret_file": str(secret_file), "replication": {"enabled": False}, **config}
        (self.state / "watch.yml").write_text(yaml.safe_dump(cfg))
        self.log = open(self.state / "watch.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(BIN / "spot-migration"), "watch", "--config", str(self.state / "watch.yml")],
                                     env=env(), stdout=self.log, stderr=subprocess.STDOUT)
        end = time.time() + 30
        while not (self.state / "ledger.sqlite").exists() and time.time() < end:
            time.sleep(0.1)
        time.sleep(1.0)

    def rows(self, sql: str, *args) -> list[dict]:
        db = sqlite3.connect(self.state / "ledger.sqlite", timeout=30)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql, args)]
        finally:
            db.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for m in self.rows("SELECT id FROM migrations"):
            actions_mod.kill_marked(m["id"])
        self.log.close()


def agent_entry(fleet, node: str, notice_id: str) -> dict | None:
    path = Path(fleet.node(node).paths["state"]) / "eviction-agent" / "state" / "state.json"
    try:
        return json.loads(path.read_text())["notices"].get(notice_id)
    except (OSError, ValueError):
        return None


def detection_run(fleet, watcher: Watcher, nodes: list[str], count: int, per_round: int, timeout: float,
                  kind_of: dict[str, str], phase: float) -> dict:
    """Inject ``count`` notices, ``per_round`` nodes at a time, each round after a random wait of up to ``phase``
    seconds (the polling or sweep period, so every phase is sampled); per notice: visible -> signalled, -> watcher."""
    signalled, received, lost = [], [], []
    by_kind: dict[str, list[float]] = {}
    rng = random.Random(7)
    done = 0
    last: dict[str, float] = {}
    while done < count:
        batch = [nodes[(done + i) % len(nodes)] for i in range(min(per_round, count - done))]  # clouds in turn
        # AWS gives the termination time to the second and the notice id rests on it: two notices for one
        # instance within a second would be one notice. Real instances get one; keep the samples apart.
        time.sleep(max([0.0] + [last.get(n, 0.0) + 1.2 - time.time() for n in batch]))
        time.sleep(rng.uniform(0.0, phase))  # then a random phase, so every point of the poll period is sampled
        created = {n: fleet_mod.inject(fleet.dir, n, kind_of[n])["created"] for n in batch}  # the simulator's clock
        end = time.time() + timeout
        pending = dict(created)
        while pending and time.time() < end:
            for node, at in list(pending.items()):
                rows = watcher.rows("SELECT * FROM notices WHERE node = ? AND detected_at >= ?", node, at - 0.5)
                if rows:
                    received.append(rows[0]["detected_at"] - at)
                    entry = agent_entry(fleet, node, rows[0]["notice_id"])
                    if entry and entry.get("signalled_epoch"):
                        signalled.append(entry["signalled_epoch"] - at)
                        by_kind.setdefault(rows[0]["provider"], []).append(entry["signalled_epoch"] - at)
                    del pending[node]
            time.sleep(0.02)
        lost += [{"node": n, "kind": kind_of[n], "created": at} for n, at in pending.items()]
        for node in batch:
            last[node] = time.time()
            fleet_mod.inject(fleet.dir, node, "clear")
            if kind_of[node] == "preempt":
                # A preempted GCE VM is stopped; before it can be preempted again it must be started again (a new
                # boot, so a new notice id).
                fleet_mod.new_boot(fleet.dir, node)
        done += len(batch)
        print(f"  {done}/{count} notices", flush=True)
    return {"signalled": summary(signalled), "watcher": summary(received), "lost": lost,
            "by_cloud": {k: {"signalled": summary(v)} for k, v in sorted(by_kind.items())}}


def probe_durations(fleet, hosts: list[str], runs: int = 5) -> list[float]:
    durations = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run([str(BIN / "ansible-playbook"), "-i", str(fleet.inventory_path), "spot.migration.probe",
                        "-e", f"probe_hosts={','.join(hosts)}"], env=env(), capture_output=True, check=True)
        durations.append(time.monotonic() - start)
    return durations


def detection(workdir: Path, count: int, net: int, sweep_count: int, sweep_interval: float) -> dict:
    with local_fleet(workdir / "fleet-detect", nodes=4, base_address=f"127.0.{net}.10") as fleet:
        secret, secret_file = make_secret(workdir / "secret")
        port = free_port()
        spot = [n.name for n in fleet.nodes if not n.standby]
        kind_of = {n.name: {"aws": "spot_interruption", "gcp": "preempt", "azure": "terminate"}[n.cloud]
                   for n in fleet.nodes if not n.standby}
        deploy(fleet, "spot", "bench-det", ["--every", "1000000", "--initial-checkpoint"])
        agents(fleet, port, secret)
        print("agents: one notice at a time on 3 spot nodes (AWS, GCP, Azure)", flush=True)
        watcher = Watcher(fleet, workdir, port, secret_file, migrate={"enabled": False}, sweep={"hosts": "none"})
        try:
            with_agents = detection_run(fleet, watcher, spot, count, 1, 20, kind_of, phase=1.0)
        finally:
            watcher.stop()
        agents(fleet, port, secret, state="stopped")
        print(f"sweep only (agents stopped, sweep of all spot nodes every {sweep_interval:g} s)", flush=True)
        watcher = Watcher(fleet, workdir, port, secret_file, migrate={"enabled": False},
                          sweep={"hosts": "all", "interval": sweep_interval})
        try:
            sweep_only = detection_run(fleet, watcher, spot, sweep_count, len(spot), 4 * sweep_interval + 30, kind_of,
                                       phase=sweep_interval)
        finally:
            watcher.stop()
        durations = probe_durations(fleet, spot, runs=min(5, count))
        rng = random.Random(30)
        cron = [rng.uniform(0, 30) + durations[i % len(durations)] for i in range(count)]
        return {"agents": with_agents, "sweep_only": sweep_only, "sweep_interval_s": sweep_interval,
                "cron_30s_modelled": {"watcher": summary(cron), "probe_playbook_s": [round(d, 2) for d in durations]}}


def evictions(workdir: Path, net: int, many: int = 8) -> dict:
    """One eviction, then ``many`` (eight) at once, with agents and the watcher migrating (max_concurrent 8)."""
    standby = max(1, many // 2)
    with local_fleet(workdir / "fleet-eight", nodes=many + standby, standby=standby,
                     base_address=f"127.0.{net + 1}.10") as fleet:
        secret, secret_file = make_secret(workdir / "secret8")
        port = free_port()
        spot = [n.name for n in fleet.nodes if not n.standby]
        agents(fleet, port, secret)
        results: dict = {"at_once": many}
        for label, nodes in (("one", spot[:1]), ("eight", spot[:many])):
            name = f"bench-{label}"
            deploy(fleet, ",".join(nodes), name, ["--every", "50"])
            watcher = Watcher(fleet, workdir, port, secret_file, migrate={"max_concurrent": 8},
                              sweep={"hosts": "none"})
            try:
                kind = {n.name: {"aws": "spot_interruption", "gcp": "preempt", "azure": "terminate"}[n.cloud]
                        for n in fleet.nodes}
                start = time.time()
                for node in nodes:
                    fleet_mod.inject(fleet.dir, node, kind[node])
                end = time.time() + 600
                rows: list[dict] = []
                while time.time() < end:
                    rows = watcher.rows("SELECT * FROM migrations")
                    if len(rows) == len(nodes) and all(r["state"] in ("running", "failed") for r in rows):
                        break
                    time.sleep(0.5)
                each = [r["finished_at"] - r["notice_at"] for r in rows if r["state"] == "running"]
                results[label] = {"migrations": len(rows), "running": len(each), "notice_to_running": summary(each),
                                  "errors": [r["error"] for r in rows if r["error"]],
                                  "all_running_after_s": round(max(r["finished_at"] for r in rows) - start, 2)
                                  if rows and all(r["finished_at"] for r in rows) else None}
                print(f"  {label}: {results[label]}", flush=True)
            finally:
                watcher.stop()
            for node in nodes:
                fleet_mod.inject(fleet.dir, node, "clear")
            play(fleet, {"hosts": "all", "gather_facts": False, "tasks": [{"spot.migration.workload": {
                "name": name + "-{{ node }}", "runtime": "process", "state": "absent",
                "workload_root": "{{ spot_workload_root }}"}, "loop": nodes, "loop_control": {"loop_var": "node"}}]})
        results["ratio_eight_vs_one"] = (round(results["eight"]["all_running_after_s"] / results["one"]["all_running_after_s"], 2)
                                         if results["eight"]["all_running_after_s"] and results["one"]["all_running_after_s"]
                                         else None)
        return results


def sweeps(workdir: Path, net: int, sizes: tuple[int, ...] = (8, 16, 32)) -> dict:
    with local_fleet(workdir / "fleet-sweep", nodes=max(sizes), standby=0, base_address=f"127.0.{net + 2}.10") as fleet:
        acts = actions_mod.Actions(str(fleet.inventory_path), workdir / "sweep-runs", log=lambda *_: None)
        spot = [n.name for n in fleet.nodes]
        out = {}
        try:
            for size in sizes:
                times = []
                # The first sweep of a size opens the SSH connections to the nodes new to it; the watcher keeps them
                # open from one sweep to the next (every 15 s), so the median is its steady state.
                for _ in range(3):
                    results: dict[str, dict] = {}
                    rc, seconds = actions_mod.sweep(acts, spot[:size], 5.0,
                                                    lambda host, res: results.__setitem__(host, res))
                    if rc != 0 or len(results) != size:
                        raise SystemExit(f"sweep of {size} nodes: rc {rc}, {len(results)} results")
                    times.append(seconds)
                out[str(size)] = {"runs_s": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2),
                                  "first_s": round(times[0], 2)}
                print(f"  sweep of {size} nodes: {out[str(size)]}", flush=True)
        finally:
            acts.close()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notices", type=int, default=50)
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--skip-eight", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (watcher logs, ledgers)")
    parser.add_argument("--sweep-notices", type=int, default=None, help="notices for the sweep-only part (default notices/3, >= 9)")
    parser.add_argument("--sweep-interval", type=float, default=15.0, help="the watcher's sweep interval in the sweep-only part")
    parser.add_argument("--eight", type=int, default=8, help="how many evictions at once (compared with one)")
    parser.add_argument("--sweep-sizes", default="8,16,32", help="fleet sizes for the probe sweep timing")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="where watch.json goes")
    parser.add_argument("--net", type=int, default=60, help="third octet of the first fleet's loopback addresses (uses 3)")
    args = parser.parse_args()
    report = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d"),
              "python": platform.python_version()}
    workdir = Path(tempfile.mkdtemp(prefix="spot-bench-watch-"))
    try:
        if not args.skip_detection:
            print("== detection", flush=True)
            report["detection"] = detection(workdir, args.notices, args.net,
                                            args.sweep_notices or max(args.notices // 3, 9), args.sweep_interval)
        if not args.skip_eight:
            print("== one eviction vs eight at once", flush=True)
            report["evictions"] = evictions(workdir, args.net, args.eight)
        if not args.skip_sweep:
            print("== probe sweep time", flush=True)
            report["sweep"] = sweeps(workdir, args.net, tuple(int(x) for x in args.sweep_sizes.split(",")))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "watch.json").write_text(json.dumps(report, indent=2))
    print(f"\nmachine: {report['machine']}, {report['date']}")
    if "detection" in report:
        d = report["detection"]
        print(f"{'notice visible ->':<37} {'p50':>8} {'p95':>8} {'n':>4}")
        rows = [("workload signalled (agent)", d["agents"]["signalled"]),
                ("watcher has it (agent push)", d["agents"]["watcher"]),
                (f"watcher has it (sweep only, {d['sweep_interval_s']:g} s)", d["sweep_only"]["watcher"]),
                ("watcher has it (cron 30 s, modelled)", d["cron_30s_modelled"]["watcher"])]
        for label, s in rows:
            print(f"{label:<37} {s['p50_s']:>7}s {s['p95_s']:>7}s {s['n']:>4}")
    if "evictions" in report:
        e = report["evictions"]
        print(f"one eviction: running after {e['one']['all_running_after_s']} s; {e['at_once']} at once: all running after "
              f"{e['eight']['all_running_after_s']} s (x{e['ratio_eight_vs_one']}), per migration p50 "
              f"{e['eight']['notice_to_running']['p50_s']} s")
    if "sweep" in report:
        print("probe sweep: " + ", ".join(f"{k} nodes {v['median_s']} s" for k, v in report["sweep"].items()))
    print(f"written: {out / 'watch.json'}")


if __name__ == "__main__":
    main()
