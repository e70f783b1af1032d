"""Benchmark for issue [D]: one migration on the local fleet, per step, against a raw rsync of the same bytes
and against the hand-written runbook way of doing it.

Run: .venv/bin/python bench/migration.py [--sizes 10,1024] [--skip-runbook] [--out DIR]
Prints a table and writes DIR/migration.json (default bench/out). Not a test: it asserts nothing.

* ours: notice injected on node1 (AWS dialect) -> spot.migration.migrate through ansible-runner (as the watcher
  runs it) -> the trainer running on standby1 from the verified checkpoint; the steps come from the migration
  record, the SSH round trips from the run's job events, the controller CPU seconds from getrusage.
* baseline: the same with the collection as it was at --baseline-ref (before the coarse steps), same fleet, same run.
* raw rsync: the same checkpoint file, node1 -> standby1, `rsync --archive --whole-file` over the same SSH.
* runbook: a cron-style check every 30 s, then one ssh command after another: `kill -USR1`, `sleep 10`,
  `ls -t | head -1`, `rsync -avz`, start the trainer with `--resume`, wait for it to run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from spot_migration import collections_path  # noqa: E402
from spot_migration import fleet as fleet_mod  # noqa: E402
from spot_migration.watch import actions as actions_mod  # noqa: E402

PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
# The last commit before a migration became a handful of coarse steps (issue [I]): the figures' baseline.
BASELINE_REF = "31141c9"


def ts(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path()), ANSIBLE_NOCOLOR="1",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def play(fleet, tasks, hosts="node1") -> None:
    path = Path(fleet.dir) / f"bench-{time.monotonic_ns()}.json"
    path.write_text(json.dumps([{"hosts": hosts, "gather_facts": False, "tasks": tasks}]))
    result = subprocess.run([PLAYBOOK, "-i", str(fleet.inventory_path), str(path)], env=env(), capture_output=True,
                            text=True, check=False)
    if result.returncode:
        raise SystemExit(result.stdout[-3000:])


def deploy(fleet, name: str, size_mb: int) -> str:
    node = fleet.node("node1")
    ck = os.path.join(node.paths["checkpoints"], name)
    play(fleet, [
        {"spot.migration.workload": {
            "name": name, "command": ["{{ ansible_python_interpreter }}", fleet.trainer], "checkpoint_dir": ck,
            "args": ["--checkpoint-dir", ck, "--step-time", "0.01", "--every", "100", "--keep", "2",
                     "--initial-checkpoint", "--size-mb", str(size_mb), "--progress", os.path.join(ck, "progress.json")],
            "workload_root": "{{ spot_workload_root }}", "gpus": 1}},
        {"spot.migration.checkpoint_info": {"path": ck, "wait_timeout": 120, "stable_for": 1}},
    ])
    return ck


def round_trips(events: list[dict]) -> dict:
    """SSH module round trips of a run, from its job events: every task result on a remote host (not skipped, not
    run on or delegated to the controller). ``critical_path``: per play the most any one host made, summed (hosts of
    one play run in parallel; plays one after another)."""
    per_play: dict[str, dict[str, int]] = {}
    total = 0
    for event in events:
        data = event.get("event_data") or {}
        if event.get("event") not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            continue
        host = data.get("delegated_host") or data.get("host")  # ansible-runner names a delegation's host here
        res = data.get("res") or {}
        delegated = (res.get("_ansible_delegated_vars") or {}).get("ansible_host") if isinstance(res, dict) else None
        if host in ("localhost", "127.0.0.1") or delegated in ("localhost", "127.0.0.1") or \
                data.get("task_action") in ("ansible.builtin.add_host", "add_host", "ansible.builtin.set_fact",
                                            "set_fact", "ansible.builtin.debug", "debug", "ansible.builtin.assert",
                                            "assert", "ansible.builtin.include_role", "include_role", "meta"):
            continue
        total += 1
        play = per_play.setdefault(data.get("play_uuid") or data.get("play") or "?", {})
        play[host] = play.get(host, 0) + 1
    return {"total": total, "critical_path": sum(max(p.values()) for p in per_play.values()),
            "plays": len(per_play)}


def run_playbook(fleet, extravars: dict, collections: Path, work: Path) -> tuple[int, list[dict], float, str]:
    """spot.migration.migrate through ansible-runner (as the watcher runs it). Returns (rc, events, controller CPU
    seconds: this process's and every child's, ansible-playbook, its forks and the ssh clients, stdout tail)."""
    import ansible_runner
    import resource

    private = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    before_self, before_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = ansible_runner.run(
        private_data_dir=str(private), playbook="spot.migration.migrate", inventory=str(fleet.inventory_path),
        extravars=extravars, quiet=True, settings={"suppress_env_files": True},
        envvars={"ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "true",
                 **actions_mod.run_config(work),  # as the watcher runs it
                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    after_self, after_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(a, f) - getattr(b, f) for a, b in ((after_self, before_self), (after_children, before_children))
              for f in ("ru_utime", "ru_stime"))
    events = list(result.events)
    tail = (private / "artifacts").exists() and "".join(
        (e.get("stdout") or "") + "\n" for e in events[-40:]) or ""
    return result.rc, events, cpu, tail


def run_ours(fleet, size_mb: int, work: Path, collections: Path | None = None, label: str = "ours") -> dict:
    """One migration of a ``size_mb`` checkpoint node1 -> standby1 by the collection at ``collections`` (default the
    installed one), timed from its record; its round trips counted from the run's job events."""
    name = f"bench-{label}-{size_mb}"
    deploy(fleet, name, size_mb)
    time.sleep(1)
    notice = time.time()
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    records = work / f"records-{label}-{size_mb}"
    rc, events, cpu, tail = run_playbook(fleet, {
        "source": "node1", "spot_record_dir": str(records), "spot_reservation_file": str(work / f"res-{label}.json"),
        "resume_timeout": 300, "target": "standby1"}, collections or collections_path(), work)
    done = time.time()
    fleet_mod.inject(fleet.dir, "node1", "clear")
    if rc:
        raise SystemExit(f"{label}: migrate rc {rc}\n{tail[-4000:]}")
    row = json.loads(next(records.glob("*.json")).read_text())["migrations"][0]
    steps = {
        "detect+plan": ts(row["target_chosen_at"]) - notice,
        "stop+seal": ts(row["checkpoint_verified_at"]) - ts(row["target_chosen_at"]),
        "transfer": ts(row["transferred_at"]) - ts(row["transfer_started_at"]),
        "verify+start": ts(row["started_on_target_at"]) - ts(row["transferred_at"]),
        "progress check": ts(row["resumed_at"]) - ts(row["started_on_target_at"]),
    }
    play(fleet, [{"spot.migration.workload": {"name": name, "state": "absent",
                                              "workload_root": "{{ spot_workload_root }}"}}], hosts="standby1")
    return {"bytes": row["bytes"], "steps_s": {k: round(v, 2) for k, v in steps.items()},
            "notice_to_verified_on_target_s": round(ts(row["verified_on_target_at"]) - notice, 2),
            "notice_to_running_s": round(ts(row["started_on_target_at"]) - notice, 2),
            "notice_to_resumed_s": round(ts(row["resumed_at"]) - notice, 2),
            "playbook_s": round(done - notice, 2), "checkpoint_step": row["checkpoint_step"],
            "first_new_step": row["first_new_step"], "round_trips": round_trips(events),
            "task_results": sum(1 for e in events if e.get("event") in ("runner_on_ok", "runner_on_failed",
                                                                         "runner_on_skipped", "runner_on_unreachable")),
            "controller_cpu_s": round(cpu, 2)}


def baseline_collection(ref: str, work: Path) -> Path | None:
    """The collection as it was at git ``ref`` (the figures' baseline, run in the same run on the same fleet), in a
    collections path of its own; None when this is not a git checkout."""
    dest = work / "baseline" / "ansible_collections" / "spot" / "migration"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], capture_output=True, check=False)
    if archive.returncode:
        print(f"no baseline: git archive {ref}: {archive.stderr.decode(errors='replace').strip()}", flush=True)
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return work / "baseline"


def raw_rsync(fleet, size_mb: int) -> float:
    node1, target = fleet.node("node1"), fleet.node("standby1")
    src = os.path.join(node1.paths["checkpoints"], f"raw-{size_mb}.bin")
    with open(src, "wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1024 * 1024))
    dest = os.path.join(target.paths["checkpoints"], "raw-copy") + "/"
    ssh = ["ssh", "-F", node1.paths["ssh_config"], "node1"]
    start = time.monotonic()
    subprocess.run(ssh + [shlex.join(["rsync", "--archive", "--whole-file", "--mkpath", "--rsh",
                                      f"ssh -F {node1.paths['ssh_config']}", src, f"{target.address}:{dest}"])],
                   check=True, capture_output=True)
    took = time.monotonic() - start
    os.unlink(src)
    shutil.rmtree(dest, ignore_errors=True)
    return took


def run_runbook(fleet, size_mb: int, cron_period: float = 30.0, settle: int = 10) -> dict:
    """The hand-written way: poll every 30 s, then ssh commands one after another."""
    name = f"runbook-{size_mb}"
    ck = deploy(fleet, name, size_mb)
    node1, target = fleet.node("node1"), fleet.node("standby1")
    ssh1 = ["ssh", "-F", node1.paths["ssh_config"], "node1"]
    ssh_t = ["ssh", "-F", node1.paths["ssh_config"], "standby1"]
    pid = json.loads((Path(node1.paths["workloads"]) / name / "workload.pid").read_text())["pid"]
    # The notice lands at a random point of the cron cycle: on average half a period before the next check.
    notice = time.time()
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    time.sleep(cron_period / 2)
    detected = time.time()
    subprocess.run(ssh1 + ["kill", "-USR1", str(pid)], check=True)
    subprocess.run(ssh1 + ["sleep", str(settle)], check=True)
    moved = time.time()
    dest_dir = os.path.join(target.paths["checkpoints"], name)
    # The trainer keeps writing and rotating checkpoints meanwhile: the file picked can vanish under rsync (exit 24,
    # or 23 for a partial transfer); the operator lists again and retries, as a person running this would.
    for attempt in range(3):
        newest = subprocess.run(ssh1 + [f"ls -t {ck}/*.safetensors | head -1"], check=True, capture_output=True,
                                text=True).stdout.strip()
        copy = subprocess.run(ssh1 + [shlex.join(["rsync", "-avz", "--mkpath", "--rsh",
                                                  f"ssh -F {node1.paths['ssh_config']}", newest,
                                                  f"{target.address}:{dest_dir}/"])], capture_output=True, check=False)
        if copy.returncode == 0:
            break
        if copy.returncode not in (23, 24) or attempt == 2:
            raise SystemExit(f"runbook rsync exit {copy.returncode}: {copy.stderr.decode(errors='replace')[-500:]}")
    copied = time.time()
    subprocess.run(ssh1 + ["kill", "-TERM", str(pid)], check=True)
    resume = os.path.join(dest_dir, os.path.basename(newest))
    subprocess.run(ssh_t + [f"nohup {fleet.python} {fleet.trainer} --checkpoint-dir {dest_dir} --resume {resume} "
                            f"--step-time 0.01 --every 1000000 --initial-checkpoint --progress {dest_dir}/progress.json "
                            f"> {dest_dir}/log 2>&1 & echo $! > {dest_dir}/pid"], check=True)
    progress = Path(dest_dir) / "progress.json"
    while not (progress.exists() and json.loads(progress.read_text()).get("resumed_from") is not None):
        time.sleep(0.05)
    running = time.time()
    fleet_mod.inject(fleet.dir, "node1", "clear")
    fleet_mod._stop_pid(int((Path(dest_dir) / "pid").read_text()))
    play(fleet, [{"spot.migration.workload": {"name": name, "state": "absent",
                                              "workload_root": "{{ spot_workload_root }}"}}])
    return {"notice_to_running_s": round(running - notice, 2), "cron_period_s": cron_period, "settle_s": settle,
            "steps_s": {"cron wait": round(detected - notice, 2), "signal+sleep+ls": round(moved - detected, 2),
                        "rsync -avz": round(copied - moved, 2), "resume": round(running - copied, 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,1024", help="checkpoint sizes in MiB")
    parser.add_argument("--skip-runbook", action="store_true")
    parser.add_argument("--cron-period", type=float, default=30.0, help="the runbook's polling period (s)")
    parser.add_argument("--runbook-settle", type=int, default=10, help="the runbook's sleep after the signal (s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="where migration.json goes")
    parser.add_argument("--net", type=int, default=60, help="third octet of the fleet's loopback addresses")
    parser.add_argument("--baseline-ref", default=BASELINE_REF,
                        help="git ref of the collection the figures are compared with, run side by side ('' for none)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spot-bench-mig-"))
    fleet = fleet_mod.up(work / "fleet", nodes=3, standby=1, base_address=f"127.0.{args.net}.10", log=lambda *_: None)
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"), "sizes": {},
              "baseline_ref": args.baseline_ref or None}
    try:
        old = baseline_collection(args.baseline_ref, work) if args.baseline_ref else None
        for size in (int(s) for s in args.sizes.split(",")):
            ours = run_ours(fleet, size, work)
            raw = raw_rsync(fleet, size)
            entry = {"ours": ours, "raw_rsync_s": round(raw, 2),
                     "transfer_vs_rsync": round(ours["steps_s"]["transfer"] / raw, 2) if raw else None}
            if old is not None:
                entry["baseline"] = run_ours(fleet, size, work, old, "baseline")
            if not args.skip_runbook:
                entry["runbook"] = run_runbook(fleet, size, args.cron_period, args.runbook_settle)
                entry["speedup_vs_runbook"] = round(entry["runbook"]["notice_to_running_s"] / ours["notice_to_running_s"], 2)
            report["sizes"][f"{size} MiB"] = entry
            print(json.dumps({f"{size} MiB": entry}), flush=True)
    finally:
        fleet_mod.down(work / "fleet", log=lambda *_: None)
        shutil.rmtree(work, ignore_errors=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "migration.json").write_text(json.dumps(report, indent=2))
    print(f"\nmachine: {report['machine']}, {report['date']}")
    print(f"{'size':>9} {'->running':>10} {'->progress':>11} {'detect+plan':>12} {'stop+seal':>10} {'transfer':>9} "
          f"{'raw rsync':>10} {'ratio':>6} {'verify+start':>13} {'runbook':>8} {'speedup':>8}")
    for size, e in report["sizes"].items():
        s = e["ours"]["steps_s"]
        print(f"{size:>9} {e['ours']['notice_to_running_s']:>9}s {e['ours']['notice_to_resumed_s']:>10}s "
              f"{s['detect+plan']:>11}s {s['stop+seal']:>9}s {s['transfer']:>8}s {e['raw_rsync_s']:>9}s "
              f"{e['transfer_vs_rsync']:>6} {s['verify+start']:>12}s "
              f"{e.get('runbook', {}).get('notice_to_running_s', '-'):>7}s {e.get('speedup_vs_runbook', '-'):>8}")


if __name__ == "__main__":
    main()
