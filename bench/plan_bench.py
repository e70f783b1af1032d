"""Benchmark for issue [L]: the plan against the deadline, against today's behaviour, side by side on one local fleet.

Run: .venv/bin/python bench/plan_bench.py [--size-mb 1024] [--out DIR]
Prints a table and writes DIR/plan.json (default bench/out). Not a test: it asserts nothing.

A trainer with SIZE MiB checkpoints on a GCP-dialect spot node (a preemption gives no time: the 30 s window, 25 s
after the 5 s margin), its agent replicating every checkpoint to the standby node, the watcher migrating. The node
pair is throttled (rsync --bwlimit, the agent's replication and the migration's transfer alike) to three bandwidths:
the checkpoint moves in about a fifth of the window (fits easily), in most of it (barely: the emergency checkpoint
still fits), or in twice the window (does not fit). For each, the watcher with its plan and without it (``migrate.plan:
false``: every workload moves its emergency checkpoint, today's behaviour). At the deadline the node is taken away,
whatever is still running there (``kill_node``: the cloud does not wait); a job not moved by then is lost and
recovered from its replica once the node is declared lost (``lost.grace``).

Reported per case: notice -> the job training again on another node (its progress file says it resumed), steps lost
(the last step trained on the node minus the step resumed from), the way taken, and the prediction."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prevention import progress, remove, trainer, wait  # noqa: E402
from watch_bench import ROOT, Watcher, agents, free_port, local_fleet, make_secret  # noqa: E402

from spot_migration import fleet as fleet_mod  # noqa: E402

WINDOW_S = 30.0
STEP_S = 0.01


def running_elsewhere(fleet, name: str, source: str) -> tuple[str, dict] | None:
    """The node where the job trains again after a move (its progress file says it resumed), with that progress."""
    for node in fleet.nodes:
        if node.name == source:
            continue
        seen = progress(fleet, node.name, name)
        if seen.get("resumed_from") is not None:
            return node.name, seen
    return None


def case(fleet, workdir: Path, port: int, secret: str, secret_file: Path, size_mb: int, transfer_s: float,
         plan_on: bool, name: str, grace: float) -> dict:
    bwlimit = max(64, int(size_mb * 1024 / transfer_s))  # KiB/s
    # A checkpoint every (copy time x 1.3, at least 10 s): the replica keeps up, one interval at most behind.
    every = int(max(transfer_s * 1.3, 10.0) / STEP_S)
    watcher = Watcher(fleet, workdir, port, secret_file, heartbeat_timeout=4,
                      sweep={"hosts": "silent", "interval": 2, "timeout": 3}, lost={"grace": grace},
                      replication={"enabled": True, "interval": 1.0, "bwlimit": bwlimit},
                      migrate={"plan": plan_on, "extra_vars": {"spot_transfer_bwlimit": bwlimit, "resume_timeout": 600}})
    try:
        trainer(fleet, "node1", name, ["--every", str(every), "--keep", "2", "--size-mb", str(size_mb),
                                       "--initial-checkpoint"])
        ready = wait(lambda: [r for r in watcher.rows("SELECT * FROM workloads WHERE name = ?", name)
                              if r["replica_step"] is not None] and
                     watcher.rows("SELECT * FROM measurements WHERE kind = 'throughput' AND key = 'node1>standby1'"),
                     transfer_s * 3 + 120)
        if not ready:
            return {"error": "no replica in place"}
        fleet_mod.new_boot(fleet.dir, "node1")
        notice = time.time()
        fleet_mod.inject(fleet.dir, "node1", "preempt")
        # The cloud takes the node at the deadline, whatever still runs there.
        found = wait(lambda: running_elsewhere(fleet, name, "node1"), WINDOW_S)
        last = progress(fleet, "node1", name).get("step")
        killed = False
        if not found:
            fleet_mod.kill_node(fleet.dir, "node1")
            killed = True
            last = progress(fleet, "node1", name).get("step")
            found = wait(lambda: running_elsewhere(fleet, name, "node1"), grace + 300)
        running_at = time.time()
        # The run ends once the resumed job has written a new checkpoint: its record says how it went.
        wait(lambda: all(r["state"] in ("running", "failed") for r in watcher.rows("SELECT state FROM migrations")),
             every * STEP_S + 120)
        rows = watcher.rows("SELECT * FROM migrations ORDER BY created_at")
        plans = watcher.rows("SELECT * FROM plans")
        plan = json.loads(plans[0]["plan"])["workloads"].get(name) if plans else None
        record = json.loads(rows[0]["record"] or "{}") if rows and rows[0].get("record") else {}
        row = next((r for r in record.get("migrations") or [] if r.get("workload") == name), {})
        target, seen = found if found else (None, {})
        out = {"bandwidth_mib_s": round(bwlimit / 1024, 1), "transfer_s": round(transfer_s, 1), "plan": plan_on,
               "notice_to_running_s": round(running_at - notice, 2) if found else None,
               "node_taken_before_the_move": killed, "target": target,
               "last_step_trained": last, "resumed_from": seen.get("resumed_from"),
               "steps_lost": (last - seen["resumed_from"]) if last is not None and found else None,
               "checkpoint_interval_steps": every,
               "way": "recovered from the replica after the loss" if killed else (
                   "replica (fell back)" if row.get("fell_back") else row.get("resume_choice") or "emergency"),
               "migrations": [(r["state"], (r["error"] or "")[:120]) for r in rows]}
        if plan:
            out["choice"] = plan["choice"]
            out["predicted_s"] = {o["from"]: o["predicted_s"] for o in plan["options"]}
        return out
    finally:
        watcher.stop()
        if next(n for n in fleet_mod.status(fleet.dir) if n["name"] == "node1")["sshd"]:
            fleet_mod.inject(fleet.dir, "node1", "clear")
        else:  # taken away at the deadline: back, as a new boot (its simulator starts without a notice), with its agent
            fleet_mod.restart_node(fleet.dir, "node1")
            agents(fleet, port, secret, hosts="node1")
        remove(fleet, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--grace", type=float, default=20.0, help="lost.grace: the wait before a silent node is lost")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--net", type=int, default=66, help="third octet of the fleet's loopback addresses")
    parser.add_argument("--cases", default="fits easily,barely,does not fit", help="which bandwidths (comma-separated)")
    args = parser.parse_args()
    workdir = Path(__import__("tempfile").mkdtemp(prefix="spot-plan-bench-"))
    window = WINDOW_S - 5.0
    bandwidths = {"fits easily": window / 5, "barely": window * 0.6, "does not fit": window * 2}
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in bandwidths]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(bandwidths)}")
    bandwidths = {k: v for k, v in bandwidths.items() if k in wanted}
    results: dict = {"size_mib": args.size_mb, "window_s": WINDOW_S, "safety_margin_s": 5.0, "cases": {}}
    try:
        with local_fleet(workdir / "fleet", nodes=2, standby=1, clouds=("gcp",),
                         base_address=f"127.0.{args.net}.10") as fleet:
            secret, secret_file = make_secret(workdir / "secret")
            port = free_port()
            agents(fleet, port, secret)
            for label, transfer_s in bandwidths.items():
                for plan_on in (True, False):
                    key = f"{label}, {'plan' if plan_on else 'today'}"
                    name = f"plan-{len(results['cases'])}"
                    results["cases"][key] = case(fleet, workdir, port, secret, secret_file, args.size_mb, transfer_s,
                                                 plan_on, name, args.grace)
                    print(f"  {key}: {results['cases'][key]}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # six jobs' checkpoints and replicas: gigabytes each
    results["machine"] = f"{platform.machine()} {platform.node()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'case':32} {'->running':>10} {'steps lost':>10}  way")
    for key, r in results["cases"].items():
        print(f"{key:32} {str(r.get('notice_to_running_s')) + ' s':>10} {str(r.get('steps_lost')):>10}  {r.get('way')}")
    print(f"written: {args.out / 'plan.json'}")


if __name__ == "__main__":
    main()
