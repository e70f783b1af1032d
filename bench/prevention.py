"""Benchmark for issue [H]: what preparing before the notice buys, on local fleets (real sshd, rsync, agents,
watcher, ansible-runner, the reference trainer).

Run: .venv/bin/python bench/prevention.py [--size-mb 1024] [--losses 3] [--out DIR]
Prints the figures and writes OUT/prevention.json (default bench/out). Not a test: it asserts nothing.

* notice -> running, with and without pre-staging: the trainer with SIZE MiB checkpoints on a spot node, the watcher
  migrating. Without: replication off. With: replication on, the notice injected once the first replica is in place
  (the next target reserved, the replica on it). The trainer checkpoints on the agent's signal, so the emergency
  checkpoint is always new and moves whole either way: what pre-staging saves here is the choice of target and
  whatever files did not change (none, for the trainer's single-file checkpoints).
* hard loss: the trainer checkpointing every EVERY steps of 10 ms, the node's agent replicating each checkpoint as it
  is written; at a random moment the node is killed (agent, sshd, metadata service, workload at once, no notice).
  Reported: steps trained but lost (last step on the dead node minus the step resumed from), against the checkpoint
  interval and against what no replication can save (the steps since the newest checkpoint on the node's disk); the
  replica's copy lag (checkpoint written -> published on the replica node); loss -> running again (grace included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watch_bench import ROOT, Watcher, agents, deploy, free_port, local_fleet, make_secret, play  # noqa: E402

from spot_migration import fleet as fleet_mod  # noqa: E402
from spot_migration.watch.app import to_epoch  # noqa: E402


def trainer(fleet, host: str, name: str, extra: list[str]) -> None:
    deploy(fleet, host, name, extra, per_host=False, progress=True, wait_timeout=300)


def remove(fleet, name: str) -> None:
    play(fleet, {"hosts": "all", "gather_facts": False, "ignore_unreachable": True, "tasks": [
        {"spot.migration.workload": {"name": name, "runtime": "process", "state": "absent",
                                     "workload_root": "{{ spot_workload_root }}"}, "ignore_errors": True}]})


def progress(fleet, node: str, name: str) -> dict:
    try:
        return json.loads((Path(fleet.node(node).paths["checkpoints"]) / name / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def wait(predicate, timeout: float):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    return None


def notice_runs(workdir: Path, size_mb: int, net: int) -> dict:
    out = {}
    with local_fleet(workdir / "fleet-notice", nodes=4, standby=1, base_address=f"127.0.{net}.10") as fleet:
        secret, secret_file = make_secret(workdir / "secret-n")
        port = free_port()
        agents(fleet, port, secret)
        for label, replication in (("without", False), ("with", True)):
            name = f"prev-{label}"
            trainer(fleet, "node1", name, ["--every", "100", "--initial-checkpoint", "--size-mb", str(size_mb)])
            watcher = Watcher(fleet, workdir, port, secret_file, sweep={"hosts": "none"},
                              replication={"enabled": replication, "interval": 2.0})
            try:
                prestaged = None
                if replication:
                    ready = wait(lambda: [r for r in watcher.rows("SELECT * FROM workloads WHERE name = ?", name)
                                          if r["replica_step"] is not None], 600)
                    prestaged = ready[0] if ready else None
                    print(f"  replica of {size_mb} MiB in place on {prestaged and prestaged['replica']}", flush=True)
                start = time.time()
                fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
                done = wait(lambda: [r for r in watcher.rows("SELECT * FROM migrations") if r["state"] in ("running", "failed")],
                            600)
                row = done[0] if done else {}
                record = json.loads(row.get("record") or "{}")
                mig = (record.get("migrations") or [{}])[0]
                verified = mig.get("verified_on_target_at")
                out[label] = {
                    "state": row.get("state"), "error": row.get("error"),
                    "notice_to_running_s": round(row["finished_at"] - row["notice_at"], 2) if row.get("finished_at") else None,
                    "notice_to_verified_on_target_s": round(to_epoch(verified) - start, 2) if verified else None,
                    "target": mig.get("target"), "replica": prestaged and prestaged["replica"],
                    "bytes": mig.get("bytes")}
                print(f"  {label} pre-staging: {out[label]}", flush=True)
            finally:
                watcher.stop()
                fleet_mod.inject(fleet.dir, "node1", "clear")
                remove(fleet, name)
    if out.get("with", {}).get("notice_to_running_s") and out.get("without", {}).get("notice_to_running_s"):
        out["saved_s"] = round(out["without"]["notice_to_running_s"] - out["with"]["notice_to_running_s"], 2)
    return out


def losses(workdir: Path, count: int, every: int, grace: float, net: int) -> dict:
    trials = []
    rng = random.Random(11)
    # The standby node takes every lost node's workload: give it a GPU for each.
    with local_fleet(workdir / "fleet-loss", nodes=max(2, count) + 1, standby=1, gpus=max(2, count),
                     base_address=f"127.0.{net + 1}.10") as fleet:
        secret, secret_file = make_secret(workdir / "secret-l")
        port = free_port()
        agents(fleet, port, secret)
        watcher = Watcher(fleet, workdir, port, secret_file, heartbeat_timeout=4,
                          sweep={"hosts": "silent", "interval": 2, "timeout": 3},
                          replication={"enabled": True, "interval": 2.0}, lost={"grace": grace})
        try:
            spot = [n.name for n in fleet.nodes if not n.standby][:count]
            for node in spot:
                name = f"loss-{node}"
                trainer(fleet, node, name, ["--every", str(every), "--keep", "2", "--size-mb", "16"])
                wait(lambda: [r for r in watcher.rows("SELECT * FROM workloads WHERE name = ?", name)
                              if r["replica_step"] is not None], 300)
                time.sleep(rng.uniform(0, every * 0.01 * 2))  # a random moment of the checkpoint cycle
                replicated = (watcher.rows("SELECT * FROM workloads WHERE name = ?", name) or [{}])[0]
                on_disk = [int(p.name.split("-")[1].split(".")[0]) for p in
                           (Path(fleet.node(node).paths["checkpoints"]) / name).glob("step-*.safetensors")]
                killed = time.time()
                fleet_mod.kill_node(fleet.dir, node)
                last = progress(fleet, node, name).get("step")
                rows = wait(lambda: [m for m in watcher.rows("SELECT * FROM migrations WHERE source = ?", node)
                                     if m["state"] in ("running", "failed")], grace + 300)
                m = rows[0] if rows else {}
                target = json.loads(m.get("targets") or "{}").get(name)
                resumed = wait(lambda: target and progress(fleet, target, name).get("resumed_from") is not None
                               and progress(fleet, target, name), 60) or {}
                trial = {"node": node, "state": m.get("state"), "error": m.get("error"), "target": target,
                         "last_trained_step": last, "replica_step_at_loss": replicated.get("replica_step"),
                         "newest_on_disk_at_loss": max(on_disk) if on_disk else None,
                         # checkpoint written -> published on the replica node, for the replica held at the loss
                         "replica_copy_lag_s": round(replicated["replicated_at"] - replicated["replica_mtime"], 2)
                         if replicated.get("replicated_at") and replicated.get("replica_mtime") else None,
                         "resumed_from": resumed.get("resumed_from"),
                         "steps_lost": (last - resumed["resumed_from"]) if last is not None and resumed.get("resumed_from")
                         is not None else None,
                         "loss_to_running_s": round(m["finished_at"] - killed, 2) if m.get("finished_at") else None}
                trials.append(trial)
                print(f"  loss of {node}: {trial}", flush=True)
        finally:
            watcher.stop()
    lost = [t["steps_lost"] for t in trials if t["steps_lost"] is not None]
    since = [t["last_trained_step"] - t["newest_on_disk_at_loss"] for t in trials
             if t["last_trained_step"] is not None and t["newest_on_disk_at_loss"] is not None]
    return {"checkpoint_every_steps": every, "since_last_checkpoint_max": max(since) if since else None,
            "replica_copy_lag_s_max": max((t["replica_copy_lag_s"] for t in trials if t["replica_copy_lag_s"] is not None),
                                          default=None), "step_time_s": 0.01, "grace_s": grace, "trials": trials,
            "steps_lost_max": max(lost) if lost else None,
            "steps_lost_mean": round(sum(lost) / len(lost), 1) if lost else None,
            "within_one_interval": sum(1 for v in lost if v <= every), "n": len(lost)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="checkpoint size for notice -> running")
    parser.add_argument("--losses", type=int, default=3, help="hard-loss trials (one spot node each)")
    parser.add_argument("--every", type=int, default=600, help="trainer checkpoint interval in steps of 10 ms")
    parser.add_argument("--grace", type=float, default=20.0, help="lost.grace for the hard-loss trials")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--net", type=int, default=63, help="third octet of the fleets' addresses (uses 2)")
    args = parser.parse_args()
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    workdir = Path(tempfile.mkdtemp(prefix="spot-bench-prev-"))
    try:
        print(f"== notice -> running, {args.size_mb} MiB, with and without pre-staging", flush=True)
        report["notice"] = notice_runs(workdir, args.size_mb, args.net)
        report["notice"]["size_mb"] = args.size_mb
        print(f"== hard loss without a notice, {args.losses} trial(s)", flush=True)
        report["loss"] = losses(workdir, args.losses, args.every, args.grace, args.net)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prevention.json").write_text(json.dumps(report, indent=2))
    n, loss = report["notice"], report["loss"]
    print(f"\nmachine: {report['machine']}, {report['date']}")
    print(f"notice -> running ({args.size_mb} MiB): without pre-staging {n.get('without', {}).get('notice_to_running_s')} s, "
          f"with {n.get('with', {}).get('notice_to_running_s')} s")
    print(f"hard loss: steps lost max {loss['steps_lost_max']} / mean {loss['steps_lost_mean']} "
          f"(checkpoint every {loss['checkpoint_every_steps']} steps; {loss['within_one_interval']}/{loss['n']} within one "
          f"interval); loss -> running {[t['loss_to_running_s'] for t in loss['trials']]} s (grace {loss['grace_s']} s)")
    print(f"written: {args.out / 'prevention.json'}")


if __name__ == "__main__":
    main()
