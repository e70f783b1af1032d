"""Benchmark for issue [M]: one member of a multi-node job evicted - ours (migrate_gang: the gang saves together, the
evicted member's part moves to a replacement, the gang restarts with a new rendezvous) against what the best-known
managed-jobs tool does (the whole gang torn down and relaunched on fresh nodes from its newest checkpoint), side by
side on one local fleet, for gangs of 2 and 3 members.

Run: .venv/bin/python bench/gang_bench.py [--members 2,3] [--repeat 2] [--out DIR] [--net N]
Prints a table and writes DIR/gang.json (default bench/out). Not a test: it asserts nothing.

The job is spot_migration.gang_trainer (torch.distributed, gloo on the nodes' loopback addresses, CPU, one process per
member, a checkpoint every ``--every`` steps, each member its own DCP part). The notice is injected on the last member
(not the master). Both sides are timed from the notice to every member training again past the step it resumed from
(its progress file). Ours is the migrate_gang playbook as the watcher runs it (the agent -> watcher hop, about a
second, is not in it); the run goes on after that to confirm the progress with a new checkpoint on every member
(``run_with_confirmation_s``). The relaunch: every member stopped (no emergency checkpoint: the tool does not ask for one),
the newest step every member holds found, each member's part copied with a bare rsync (parallel) to a fresh node, the
gang deployed there with the deploy playbook (candidates described, nodes reserved, members started) resuming from
it. Steps lost: the last step the old gang trained minus the step the new one resumed from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watch_bench import BIN, ROOT, env, free_port, local_fleet, play  # noqa: E402

from spot_migration import fleet as fleet_mod  # noqa: E402
from spot_migration import gang_trainer  # noqa: E402

NAME = "bgang"


def playbook(fleet, workdir: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ansible-playbook"), "-i", str(fleet.inventory_path), f"spot.migration.{name}",
           "-e", f"spot_record_dir={workdir / 'records'}", "-e", f"spot_reservation_file={workdir / 'reservations.json'}",
           *extra]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stdout[-4000:]}")
    return result


def progress(fleet, host: str, rank: int) -> dict:
    try:
        return json.loads((Path(fleet.node(host).paths["checkpoints"]) / NAME / f"progress-rank{rank}.json").read_text())
    except (OSError, ValueError):
        return {}


def wait(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def deploy(fleet, workdir: Path, hosts: list[str], every: int, resume: int | None = None) -> None:
    ck = "{{ spot_checkpoint_root }}/" + NAME
    workload = {"name": NAME, "runtime": "process", "gpus": 1, "checkpoint_dir": ck,
                "command": [sys.executable, gang_trainer.__file__],
                "args": ["--checkpoint-dir", ck, "--every", str(every), "--keep", "3", "--step-time", "0.02"],
                "workload_root": "{{ spot_workload_root }}", "gang": {"hosts": hosts, "master_port": free_port()}}
    if resume is not None:
        workload["resume_from"] = f"{ck}/step-{resume:08d}"
    playbook(fleet, workdir, "deploy", "-e", json.dumps({"workload": workload}))


def running_past(fleet, hosts: list[str], step: int | None) -> bool:
    for rank, host in enumerate(hosts):
        seen = progress(fleet, host, rank)
        if step is None:
            if not seen.get("step"):
                return False
        elif seen.get("resumed_from") != step or seen.get("step", 0) <= step:
            return False
    return True


def restarted(seen: dict) -> bool:
    """A rank of the restarted gang (generation 1) trains past the step it resumed from."""
    return seen.get("generation") == "1" and seen.get("resumed_from") is not None and \
        seen.get("step", 0) > seen["resumed_from"]


def remove(fleet) -> None:
    play(fleet, {"hosts": "all", "gather_facts": False, "tasks": [
        {"spot.migration.workload": {"name": f"{NAME}.{r}", "runtime": "process", "state": "absent",
                                     "workload_root": "{{ spot_workload_root }}", "stop_timeout": 2},
         "ignore_errors": True} for r in range(4)]})
    for node in fleet.nodes:
        shutil.rmtree(Path(node.paths["checkpoints"]) / NAME, ignore_errors=True)
        fleet_mod.inject(fleet.dir, node.name, "clear")


def held(fleet, host: str) -> set[int]:
    root = Path(fleet.node(host).paths["checkpoints"]) / NAME
    return {int(p.name[5:]) for p in root.glob("step-*") if p.name[5:].isdigit() and (p / ".metadata").exists()}


def ours(fleet, workdir: Path, members: int, every: int) -> dict:
    hosts = [f"node{i + 1}" for i in range(members)]
    deploy(fleet, workdir, hosts, every)
    wait(lambda: running_past(fleet, hosts, None), 120, "the gang training")
    wait(lambda: all(held(fleet, h) for h in hosts), 120, "a first checkpoint on every member")
    time.sleep(2)
    evicted = hosts[-1]
    start = time.time()
    fleet_mod.inject(fleet.dir, evicted, "spot_interruption")
    cmd = [str(BIN / "ansible-playbook"), "-i", str(fleet.inventory_path), "spot.migration.migrate_gang",
           "-e", f"spot_record_dir={workdir / 'records'}", "-e", f"spot_reservation_file={workdir / 'reservations.json'}",
           "-e", f"gang={NAME}", "-e", f"source={evicted}"]
    with subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        # Running again: every rank of the restarted gang (generation 1) trains past the step it resumed from; the
        # run itself goes on to confirm it with a new checkpoint on every member.
        wait(lambda: all(any(restarted(progress(fleet, n.name, r)) for n in fleet.nodes) for r in range(members)),
             180, "the gang running again")
        took = time.time() - start
        stdout, _ = proc.communicate(timeout=300)
    played = time.time() - start
    if proc.returncode:
        raise SystemExit(f"migrate_gang failed:\n{stdout[-4000:]}")
    record = json.loads(sorted((workdir / "records").glob("*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text())
    new_hosts = record["members"]
    result = subprocess.CompletedProcess(cmd, 0, stdout, "")
    last = progress(fleet, evicted, members - 1).get("step")  # the old process's last word on the evicted node
    remove(fleet)
    node_tasks = sum(1 for line in result.stdout.splitlines() if line.startswith("TASK [")) - 5  # localhost's: 5
    return {"notice_to_running_s": round(took, 2), "run_with_confirmation_s": round(played, 2),
            "resumed_step": record["step"],
            "steps_lost": (last - record["step"]) if last is not None else None, "members": new_hosts,
            "node_tasks_in_run": node_tasks}


def relaunch(fleet, workdir: Path, members: int, every: int) -> dict:
    hosts = [f"node{i + 1}" for i in range(members)]
    fresh = [f"node{members + i + 1}" for i in range(members)]
    deploy(fleet, workdir, hosts, every)
    wait(lambda: running_past(fleet, hosts, None), 120, "the gang training")
    wait(lambda: all(held(fleet, h) for h in hosts), 120, "a first checkpoint on every member")
    time.sleep(2)
    start = time.time()
    fleet_mod.inject(fleet.dir, hosts[-1], "spot_interruption")
    # Tear the gang down (every member), no emergency checkpoint.
    last = {}
    play(fleet, {"hosts": ",".join(hosts), "gather_facts": False, "tasks": [
        {"spot.migration.workload": {"name": NAME + ".{{ " + json.dumps(hosts) + ".index(inventory_hostname) }}",
                                     "runtime": "process", "state": "stopped", "stop_timeout": 2,
                                     "workload_root": "{{ spot_workload_root }}"}}]})
    for rank, host in enumerate(hosts):
        last[host] = progress(fleet, host, rank).get("step")
    step = max(set.intersection(*(held(fleet, h) for h in hosts)))
    copied = time.time()

    def copy(old: str, new: str) -> None:
        src = Path(fleet.node(old).paths["checkpoints"]) / NAME / f"step-{step:08d}"
        dest_dir = Path(fleet.node(new).paths["checkpoints"]) / NAME
        subprocess.run(["ssh", "-F", fleet.node(old).paths["ssh_config"], fleet.node(new).address, "mkdir", "-p",
                        str(dest_dir)], check=True, capture_output=True)
        subprocess.run(["rsync", "-a", "-e", f"ssh -F {fleet.node(old).paths['ssh_config']}", str(src),
                        f"{fleet.node(new).address}:{dest_dir}/"], check=True, capture_output=True)
    threads = [threading.Thread(target=copy, args=pair) for pair in zip(hosts, fresh)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    copy_s = time.time() - copied
    deploy(fleet, workdir, fresh, every, resume=step)
    wait(lambda: running_past(fleet, fresh, step), 120, "the relaunched gang running")
    took = time.time() - start
    remove(fleet)
    return {"notice_to_running_s": round(took, 2), "copy_s": round(copy_s, 2), "resumed_step": step,
            "steps_lost": max(v for v in last.values() if v is not None) - step, "members": fresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", default="2,3")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--every", type=int, default=200, help="the job's checkpoint interval in steps (0.02 s each)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--net", type=int, default=72, help="third octet of the fleet's loopback addresses")
    args = parser.parse_args()
    sizes = [int(m) for m in args.members.split(",")]
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"spot-gang-bench-{os.getpid()}"
    workdir.mkdir(parents=True)
    out: dict = {"machine": platform.platform(), "date": time.strftime("%Y-%m-%d"), "every_steps": args.every,
                 "members": {}}
    try:
        with local_fleet(workdir / "fleet", nodes=2 * max(sizes) + 1, standby=1,
                         base_address=f"127.0.{args.net}.10") as fleet:
            for members in sizes:
                rows: dict = {"ours": [], "relaunch": []}
                for i in range(args.repeat):
                    for side, func in (("ours", ours), ("relaunch", relaunch)):
                        row = func(fleet, workdir, members, args.every)
                        rows[side].append(row)
                        print(f"{members} members, {side} #{i + 1}: notice -> running {row['notice_to_running_s']} s, "
                              f"steps lost {row['steps_lost']}", flush=True)
                med = {side: sorted(r["notice_to_running_s"] for r in rows[side])[len(rows[side]) // 2]
                       for side in rows}
                rows["median_s"] = med
                rows["speedup"] = round(med["relaunch"] / med["ours"], 2) if med["ours"] else None
                out["members"][str(members)] = rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'members':>8} {'ours s':>8} {'relaunch s':>11} {'x':>6} {'lost (ours)':>12} {'lost (relaunch)':>16}")
    for members, rows in out["members"].items():
        print(f"{members:>8} {rows['median_s']['ours']:>8} {rows['median_s']['relaunch']:>11} {rows['speedup']:>6} "
              f"{max(r['steps_lost'] or 0 for r in rows['ours']):>12} "
              f"{max(r['steps_lost'] for r in rows['relaunch']):>16}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gang.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
