"""`make bench`: every benchmark, side by side with its baseline, in one run.

Runs bench/checkpoint_bench.py ([B]), bench/migration.py ([D]) and bench/watch_bench.py ([E]) one after
another (each prints its progress), then writes

* bench/results.json - the headline figures p1..p6 (and a few more), each with its unit, baseline, machine and date;
* bench/results.md   - the same as tables a person reads, with the per-part details;
* bench/plots/*.png  - detection latency, migration steps against the runbook, scaling (matplotlib).

Run: .venv/bin/python bench/run_all.py [--smoke] [--out DIR] [--only checkpoint,migration,watch]
``--smoke`` runs every part with tiny sizes and short periods (a minute or three) so the code cannot rot; its figures
mean nothing. The raw output of each part stays in DIR/out/*.json. Not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# Arguments for each part: the real run (`make bench`, under 15 minutes on a 2-core VM) and the smoke run (CI).
PARTS = {
    "checkpoint": ("checkpoint_bench.py", ["--size-gib", "1"], ["--size-gib", "0.03"]),
    "migration": ("migration.py", ["--sizes", "10,1024"], ["--sizes", "4", "--cron-period", "2", "--runbook-settle", "1"]),
    "watch": ("watch_bench.py", ["--notices", "24", "--sweep-notices", "6"],
              ["--notices", "3", "--sweep-notices", "3", "--sweep-interval", "3", "--eight", "2", "--sweep-sizes", "2,4"]),
    "prevention": ("prevention.py", ["--size-mb", "1024", "--losses", "2"],
                   ["--size-mb", "4", "--losses", "1", "--every", "300", "--grace", "10"]),
    "plan": ("plan_bench.py", ["--size-mb", "1024"], ["--size-mb", "4", "--grace", "10", "--cases", "fits easily"]),
    "objstore": ("objstore_bench.py", ["--size-mb", "1024", "--repeat", "3"],
                 ["--size-mb", "4", "--repeat", "1", "--services", "s3"]),
    "gang": ("gang_bench.py", ["--members", "2,3", "--repeat", "3"], ["--members", "2", "--repeat", "1"]),
}
OUTPUTS = {"checkpoint": "checkpoint_bench.json", "migration": "migration.json", "watch": "watch.json",
           "prevention": "prevention.json", "plan": "plan.json", "objstore": "objstore.json", "gang": "gang.json"}


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                           if line.startswith("MemTotal:")))
        mem = f", {round(mem_kib / 2**20)} GiB"
    except (OSError, StopIteration, ValueError):
        mem = ""
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores{mem}, " \
           f"{platform.system()} {platform.release()}, Python {platform.python_version()}"


def run_part(name: str, args: list[str], out: Path, net: int) -> float:
    script, _, _ = PARTS[name]
    argv = [sys.executable, str(BENCH / script), *args, "--out", str(out)]
    if name in ("migration", "watch"):
        argv += ["--net", str(net)]
    elif name == "prevention":
        argv += ["--net", str(net + 3)]
    elif name == "plan":
        argv += ["--net", str(net + 6)]
    elif name == "gang":
        argv += ["--net", str(net + 12)]
    print(f"== {name}: {' '.join(argv[1:])}", flush=True)
    start = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"   [{name} {time.monotonic() - start:6.0f}s] {line.rstrip()}", flush=True)
    took = time.monotonic() - start
    if proc.returncode:
        raise SystemExit(f"bench part {name} failed (exit {proc.returncode}) after {took:.0f} s")
    print(f"== {name} done in {took:.0f} s", flush=True)
    return took


def largest(sizes: dict) -> tuple[str, dict]:
    key = max(sizes, key=lambda k: int(k.split()[0]))
    return key, sizes[key]


def figures(parts: dict, mach: str, date: str, smoke: bool) -> dict:
    """The headline figures, each with what it measures, its baseline, the machine and the date."""
    out: dict = {}

    def put(key, value, unit, what, baseline=None, part=None):
        out[key] = {"value": value, "unit": unit, "what": what, "baseline": baseline, "machine": mach, "date": date,
                    "source": f"bench/out/{OUTPUTS[part]}" if part else None, "smoke": smoke}

    watch = parts.get("watch") or {}
    det = watch.get("detection")
    if det:
        put("p1_detect_p95_s", det["agents"]["signalled"]["p95_s"], "s",
            "notice visible in the metadata service -> workload signalled by the eviction agent, p95 "
            f"over {det['agents']['signalled']['n']} notices (AWS, GCP, Azure in turn)",
            {"sweep only (watcher's probe sweep)": det["sweep_only"]["watcher"]["p95_s"],
             "cron every 30 s (modelled)": det["cron_30s_modelled"]["watcher"]["p95_s"]}, "watch")
    mig = parts.get("migration")
    if mig and mig.get("sizes"):
        size, entry = largest(mig["sizes"])
        ours = entry["ours"]
        put("p2_checkpoint_on_target_s", ours.get("notice_to_verified_on_target_s"), "s",
            f"notice -> checkpoint ({size}) verified against its manifest on the target",
            {"runbook (notice -> copied, unverified)":
             round(sum(v for k, v in entry["runbook"]["steps_s"].items() if k != "resume"), 2)
             if "runbook" in entry else None}, "migration")
        if "speedup_vs_runbook" in entry:
            put("p3_speedup_vs_runbook", entry["speedup_vs_runbook"], "x",
                f"runbook's notice -> running divided by ours ({size})",
                {"runbook notice -> running s": entry["runbook"]["notice_to_running_s"],
                 "ours notice -> running s": ours["notice_to_running_s"]}, "migration")
        put("p4_transfer_vs_rsync", entry["transfer_vs_rsync"], "x",
            f"our transfer step ({size}, rsync over SSH node to node incl. ansible overhead) divided by a bare "
            "`rsync --whole-file` of the same bytes (1.0 = no overhead)",
            {"bare rsync s": entry["raw_rsync_s"], "ours s": ours["steps_s"]["transfer"]}, "migration")
    ev = watch.get("evictions")
    if ev:
        put("p5_eight_vs_one", ev["ratio_eight_vs_one"], "x",
            f"{ev.get('at_once', 8)} evictions at once: time until all run again, divided by one eviction's "
            f"(1.0 = perfect parallelism, {ev.get('at_once', 8)} = serial)",
            {"one s": ev["one"]["all_running_after_s"], "all at once s": ev["eight"]["all_running_after_s"]}, "watch")
    sw = watch.get("sweep")
    if sw:
        biggest = max(sw, key=int)
        put("p6_sweep_32_nodes_s", sw[biggest]["median_s"], "s",
            f"one probe sweep of {biggest} nodes through ansible-runner (median of 3)",
            {f"{k} nodes s": v["median_s"] for k, v in sw.items() if k != biggest}, "watch")
    prev = parts.get("prevention")
    if prev:
        n, loss = prev["notice"], prev["loss"]
        put("p7_prestaged_notice_to_running_s", (n.get("with") or {}).get("notice_to_running_s"), "s",
            f"notice -> running again with a replica and a pre-reserved target in place ({n.get('size_mb')} MiB)",
            {"without pre-staging s": (n.get("without") or {}).get("notice_to_running_s")}, "prevention")
        put("p8_hard_loss_steps_lost_max", loss.get("steps_lost_max"), "steps",
            f"node killed without a notice at a random moment: steps trained but lost, worst of {loss.get('n')} "
            f"(each checkpoint replicated by the node's agent as it is written, lost.grace {loss.get('grace_s')} s)",
            {"checkpoint interval steps": loss.get("checkpoint_every_steps"), "mean": loss.get("steps_lost_mean"),
             "since the newest checkpoint on disk, max": loss.get("since_last_checkpoint_max"),
             "replica copy lag s, max": loss.get("replica_copy_lag_s_max"),
             "loss -> running s": [t.get("loss_to_running_s") for t in loss.get("trials", [])]}, "prevention")
    if mig and mig.get("sizes"):
        ref = mig.get("baseline_ref")
        before = f"before the coarse steps ({ref})" if ref else "before"
        small = min(mig["sizes"], key=lambda k: int(k.split()[0]))
        s_entry = mig["sizes"][small]
        put("p9_small_notice_to_running_s", s_entry["ours"]["notice_to_running_s"], "s",
            f"notice -> running again on the target ({small} checkpoint)",
            {f"{before} s": (s_entry.get("baseline") or {}).get("notice_to_running_s")}, "migration")
        size, entry = largest(mig["sizes"])
        ours, old = entry["ours"], entry.get("baseline") or {}
        trips = ours.get("round_trips") or {}
        put("p10_round_trips_per_migration", trips.get("critical_path"), "round trips",
            f"SSH module round trips on one migration's critical path ({size}), counted from the run's job events "
            "(per play the most any one host made, plays summed)",
            {f"{before}": (old.get("round_trips") or {}).get("critical_path"),
             "ours, all hosts": trips.get("total"), f"{before}, all hosts": (old.get("round_trips") or {}).get("total"),
             "ours, task results": ours.get("task_results"), f"{before}, task results": old.get("task_results")},
            "migration")
        put("p11_controller_cpu_s_per_migration", ours.get("controller_cpu_s"), "s",
            f"controller CPU seconds of one migration ({size}): ansible-runner, ansible-playbook, its forks and the "
            "ssh clients (getrusage)", {f"{before} s": old.get("controller_cpu_s")}, "migration")
    plan = parts.get("plan")
    if plan and plan.get("cases"):
        on, off = plan["cases"].get("does not fit, plan") or {}, plan["cases"].get("does not fit, today") or {}
        put("p12_plan_does_not_fit_notice_to_running_s", on.get("notice_to_running_s"), "s",
            f"notice -> training again for a {plan['size_mib']} MiB job whose checkpoint cannot move within the "
            f"{plan['window_s']:g} s window (GCP's preemption), with the plan against the deadline (way taken: "
            f"{on.get('way')}); the node is taken away at the deadline",
            {"today's behaviour s": off.get("notice_to_running_s"), "today's way": off.get("way"),
             "steps lost, plan": on.get("steps_lost"), "steps lost, today": off.get("steps_lost"),
             "checkpoint interval steps": on.get("checkpoint_interval_steps")}, "plan")
    store = (parts.get("objstore") or {}).get("services") or {}
    if store.get("s3"):
        s3 = store["s3"]
        put("p13_store_upload_vs_rclone_copy", s3["upload_ratio"], "x",
            f"a {s3['size_mib']} MiB checkpoint (4 shards) into S3 (moto's server on loopback): our upload (data, "
            "manifest, latest.json, pruning) divided by a bare rclone copy of the same bytes (median of "
            f"{parts['objstore']['repeat']})", {"ours s": s3["seconds"]["upload ours"],
                                                "rclone copy s": s3["seconds"]["upload rclone copy"]}, "objstore")
        put("p14_store_restore_vs_rclone_copy", s3["restore_ratio"], "x",
            f"the same back: our restore (download and sha256 of every file against the manifest) divided by a bare "
            "rclone copy", {"ours s": s3["seconds"]["restore ours"],
                            "rclone copy s": s3["seconds"]["restore rclone copy"]}, "objstore")
    gang = (parts.get("gang") or {}).get("members") or {}
    for members, rows in sorted(gang.items()):
        put(f"p{13 + int(members)}_gang_{members}_notice_to_running_s", rows["median_s"]["ours"], "s",
            f"a job over {members} nodes (torch.distributed, gloo, CPU), one member evicted: notice -> every rank "
            f"training again past the step it resumed from (median of {len(rows['ours'])})",
            {"whole gang stopped and relaunched on fresh nodes from its newest checkpoint s": rows["median_s"]["relaunch"],
             "steps lost ours (max)": max(r["steps_lost"] or 0 for r in rows["ours"]),
             "steps lost relaunch (max)": max(r["steps_lost"] for r in rows["relaunch"])}, "gang")
    ck = parts.get("checkpoint")
    if ck:
        h = ck["manifest_hashing"]
        put("hashing_vs_sha256sum", h["single_file"]["ratio"], "x",
            f"manifest hashing of one {h['size_mib']} MiB file, sha256sum's time divided by ours",
            {"sha256sum MiB/s": h["single_file"]["sha256sum_mib_s"], "ours MiB/s": h["single_file"]["ours_mib_s"]},
            "checkpoint")
        put("checkpoint_info_10k_candidates_s", ck["checkpoint_info"]["ten_thousand_candidates_s"], "s",
            "checkpoint_info choosing among 10,000 candidate files, the newest 100 torn", None, "checkpoint")
    return out


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def markdown(figs: dict, parts: dict, mach: str, date: str, smoke: bool, durations: dict) -> str:
    lines = [f"# Benchmark results{' (SMOKE RUN: tiny sizes, the figures mean nothing)' if smoke else ''}", "",
             f"Machine: {mach}  ", f"Date: {date}  ",
             f"Command: `make bench` (`.venv/bin/python bench/run_all.py`); took "
             f"{', '.join(f'{k} {v:.0f} s' for k, v in durations.items())}.", "",
             "Everything runs on one machine: every node of the local fleet (real sshd, rsync, agents, simulated "
             "metadata services and `nvidia-smi`), the watcher and ansible-playbook share its cores.", "",
             "| figure | ours | baseline | what |", "| --- | --- | --- | --- |"]
    for key, f in figs.items():
        base = "; ".join(f"{k}: {fmt(v)}" for k, v in (f["baseline"] or {}).items()) or "-"
        lines.append(f"| `{key}` | {fmt(f['value'])} {f['unit']} | {base} | {f['what']} |")
    watch = parts.get("watch") or {}
    det = watch.get("detection")
    if det:
        lines += ["", "## Detection (notice visible -> ...)", "", "| path | p50 | p95 | n |", "| --- | --- | --- | --- |"]
        rows = [("workload signalled by the agent", det["agents"]["signalled"]),
                *[(f"  {cloud}", v["signalled"]) for cloud, v in det["agents"]["by_cloud"].items()],
                ("watcher has it (agent push)", det["agents"]["watcher"]),
                (f"watcher has it, agents off (sweep every {det.get('sweep_interval_s', 15):g} s)", det["sweep_only"]["watcher"]),
                ("watcher has it, cron every 30 s (modelled)", det["cron_30s_modelled"]["watcher"])]
        for label, s in rows:
            lines.append(f"| {label} | {fmt(s['p50_s'])} s | {fmt(s['p95_s'])} s | {s['n']} |")
        lost = len(det["agents"]["lost"]) + len(det["sweep_only"]["lost"])
        lines.append(f"\nNotices not detected: {lost}.")
    mig = parts.get("migration")
    if mig:
        lines += ["", "## One migration, step by step (ours) and the hand-written runbook", "",
                  "| size | notice -> running | notice -> verified on target | detect+plan | stop+seal | transfer | "
                  "bare rsync | verify+start | runbook notice -> running | speedup |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for size, e in mig["sizes"].items():
            s = e["ours"]["steps_s"]
            lines.append(f"| {size} | {e['ours']['notice_to_running_s']} s | "
                         f"{fmt(e['ours'].get('notice_to_verified_on_target_s'))} s | {s['detect+plan']} s | "
                         f"{s['stop+seal']} s | {s['transfer']} s | {e['raw_rsync_s']} s | {s['verify+start']} s | "
                         f"{fmt(e.get('runbook', {}).get('notice_to_running_s'))} s | {fmt(e.get('speedup_vs_runbook'))} |")
        if any("baseline" in e for e in mig["sizes"].values()):
            lines += ["", f"Side by side in the same run, the collection before the coarse steps "
                      f"(`{mig.get('baseline_ref')}`) on the same fleet:", "",
                      "| size | | notice -> verified on target | notice -> running | critical-path round trips | "
                      "round trips, all hosts | task results | controller CPU |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for size, e in mig["sizes"].items():
                for label, r in (("now", e["ours"]), ("before", e.get("baseline") or {})):
                    t = r.get("round_trips") or {}
                    lines.append(f"| {size} | {label} | {fmt(r.get('notice_to_verified_on_target_s'))} s | "
                                 f"{fmt(r.get('notice_to_running_s'))} s | {fmt(t.get('critical_path'))} | "
                                 f"{fmt(t.get('total'))} | {fmt(r.get('task_results'))} | "
                                 f"{fmt(r.get('controller_cpu_s'))} s |")
        book = next((e["runbook"] for e in mig["sizes"].values() if "runbook" in e), None)
        if book:
            lines.append(f"\nThe runbook: a check every {book.get('cron_period_s', 30):g} s (the notice lands mid-cycle: "
                         f"{book.get('cron_period_s', 30) / 2:g} s), then `kill -USR1`, `sleep {book.get('settle_s', 10)}`, "
                         "`ls -t | head -1`, `rsync -avz`, start with `--resume`; nothing verified.")
    ev = watch.get("evictions")
    if ev:
        lines += ["", "## Many evictions at once", "",
                  f"One eviction: running again after {ev['one']['all_running_after_s']} s. "
                  f"{ev.get('at_once', 8)} at once (`max_concurrent: 8`): all running after "
                  f"{ev['eight']['all_running_after_s']} s (x{ev['ratio_eight_vs_one']}); per migration p50 "
                  f"{ev['eight']['notice_to_running']['p50_s']} s. Errors: {len(ev['eight']['errors'])}."]
    sw = watch.get("sweep")
    if sw:
        lines += ["", "## Probe sweep (fallback when agents are silent)", "", "| nodes | median | runs |",
                  "| --- | --- | --- |"]
        lines += [f"| {k} | {v['median_s']} s | {', '.join(map(str, v['runs_s']))} |" for k, v in sw.items()]
    prev = parts.get("prevention")
    if prev:
        n, loss = prev["notice"], prev["loss"]
        lines += ["", "## Prevention: replicas and pre-reserved targets", "",
                  f"Notice -> running ({n.get('size_mb')} MiB): without pre-staging "
                  f"{fmt((n.get('without') or {}).get('notice_to_running_s'))} s, with a replica and the next target "
                  f"reserved {fmt((n.get('with') or {}).get('notice_to_running_s'))} s. The trainer writes a new "
                  "checkpoint on the agent's signal, which moves whole either way.", "",
                  "| lost node | last step trained | newest checkpoint on its disk | replica step at loss | resumed from "
                  "| steps lost | replica copy lag | loss -> running |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in loss.get("trials", []):
            lines.append(f"| {t['node']} | {fmt(t['last_trained_step'])} | {fmt(t.get('newest_on_disk_at_loss'))} | "
                         f"{fmt(t['replica_step_at_loss'])} | {fmt(t['resumed_from'])} | {fmt(t['steps_lost'])} | "
                         f"{fmt(t.get('replica_copy_lag_s'))} s | {fmt(t['loss_to_running_s'])} s |")
        lines.append(f"\nCheckpoint every {loss.get('checkpoint_every_steps')} steps of 10 ms; "
                     f"{loss.get('within_one_interval')}/{loss.get('n')} losses within one interval; lost.grace "
                     f"{loss.get('grace_s')} s (the wait before a silent, unreachable node is declared lost).")
    plan = parts.get("plan")
    if plan and plan.get("cases"):
        lines += ["", f"## The plan against the deadline ({plan['size_mib']} MiB, GCP preemption: {plan['window_s']:g} s, "
                  f"{plan['window_s'] - plan['safety_margin_s']:g} s after the margin)", "",
                  "The node pair throttled (rsync `--bwlimit`, replication and migration alike) so the checkpoint moves "
                  "in a fifth of the window, in most of it, or in twice it; at the deadline the node is taken away.", "",
                  "| case | bandwidth | notice -> training again | steps lost | checkpoint interval | way | "
                  "predicted (emergency / replica) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for key, c in plan["cases"].items():
            pred = c.get("predicted_s") or {}
            lines.append(f"| {key} | {fmt(c.get('bandwidth_mib_s'))} MiB/s | {fmt(c.get('notice_to_running_s'))} s | "
                         f"{fmt(c.get('steps_lost'))} | {fmt(c.get('checkpoint_interval_steps'))} | {c.get('way')} | "
                         f"{fmt(pred.get('emergency'))} / {fmt(pred.get('replica'))} s |")
        lines.append("\nSteps lost count from the last step trained on the node: a job resumed from its emergency "
                     "checkpoint has still trained on while it was moved (the steps after the signal).")
    store = parts.get("objstore")
    if store and store.get("services"):
        lines += ["", f"## Replicas in object storage ({store['rclone']}, {store['transfers']} streams, median of "
                  f"{store['repeat']})", "",
                  "| service | MiB | upload ours | rclone copy | ours / bare | restore + verify ours | rclone copy | "
                  "ours / bare |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for kind, r in store["services"].items():
            t = r["seconds"]
            lines.append(f"| {kind} | {r.get('size_mib', store['size_mib'])} | {fmt(t['upload ours'])} s | "
                         f"{fmt(t['upload rclone copy'])} s | {fmt(r['upload_ratio'])}x | {fmt(t['restore ours'])} s | "
                         f"{fmt(t['restore rclone copy'])} s | {fmt(r['restore_ratio'])}x |")
        lines.append("\nServers on loopback started by the bench (moto's S3 server mode, gcp-storage-emulator); the GCS "
                     "emulator takes objects of 16 MiB at most from rclone 1.60 (a resumable upload's 308), hence its "
                     "smaller size.")
    gang = parts.get("gang")
    if gang and gang.get("members"):
        lines += ["", f"## Jobs over several nodes: one member evicted (checkpoint every {gang['every_steps']} steps)",
                  "", "| members | ours: notice -> running | run incl. confirmation | relaunch on fresh nodes | "
                  "relaunch / ours | steps lost ours | steps lost relaunch |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for members, rows in sorted(gang["members"].items()):
            confirm = sorted(r.get("run_with_confirmation_s") or 0 for r in rows["ours"])[len(rows["ours"]) // 2]
            lines.append(f"| {members} | {fmt(rows['median_s']['ours'])} s | {fmt(confirm)} s | "
                         f"{fmt(rows['median_s']['relaunch'])} s | {fmt(rows['speedup'])}x | "
                         f"{max(r['steps_lost'] or 0 for r in rows['ours'])} | "
                         f"{max(r['steps_lost'] for r in rows['relaunch'])} |")
        lines.append("\nThe relaunch here is generous to it: its fresh nodes are already up (no provisioning), it finds "
                     "the newest step by reading the nodes' disks directly and copies every member's part with a bare "
                     "rsync. Both sides pay the job's own start-up (torch import, rendezvous, DCP load: about 2.5 s "
                     "here). Ours loses the steps trained between the gang's save and the stop (the members train on "
                     "while the replacement is reserved); the relaunch loses everything since the last periodic "
                     "checkpoint.")
    ck = parts.get("checkpoint")
    if ck:
        h = ck["manifest_hashing"]
        lines += ["", f"## Checkpoint manifests ({h['size_mib']} MiB)", "", "| files | sha256sum | ours | ratio |",
                  "| --- | --- | --- | --- |"]
        for label, key in (("one file", "single_file"), ("eight shards", "eight_shards")):
            r = h[key]
            lines.append(f"| {label} | {r['sha256sum_mib_s']} MiB/s | {r['ours_mib_s']} MiB/s | {r['ratio']}x |")
        i = ck["checkpoint_info"]
        lines.append(f"\n`checkpoint_info`: 10,000 candidates (newest 100 torn) {i['ten_thousand_candidates_s']} s; "
                     f"one checkpoint of 10,000 files {i['one_checkpoint_of_ten_thousand_files_s']} s.")
    lines += ["", "Plots: `bench/plots/detection.png`, `bench/plots/migration.png`, `bench/plots/scaling.png`.", ""]
    return "\n".join(lines)


def plots(parts: dict, directory: Path, title: str) -> list[Path]:
    import matplotlib  # noqa: PLC0415 - heavy, only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    watch = parts.get("watch") or {}
    det = watch.get("detection")
    if det:
        rows = [("agent signals workload", det["agents"]["signalled"]), ("watcher, agent push", det["agents"]["watcher"]),
                ("watcher, sweep only", det["sweep_only"]["watcher"]),
                ("watcher, cron 30 s (model)", det["cron_30s_modelled"]["watcher"])]
        fig, ax = plt.subplots(figsize=(8, 3.2))
        ys = range(len(rows))
        ax.barh([y + 0.2 for y in ys], [r[1]["p50_s"] or 0 for r in rows], height=0.4, label="p50", color="#4c78a8")
        ax.barh([y - 0.2 for y in ys], [r[1]["p95_s"] or 0 for r in rows], height=0.4, label="p95", color="#f58518")
        ax.set_yticks(list(ys), [r[0] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("seconds after the notice became visible")
        ax.set_title(f"Detection latency - {title}")
        ax.legend()
        fig.tight_layout()
        path = directory / "detection.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    mig = parts.get("migration")
    if mig:
        bars = []
        for size, e in mig["sizes"].items():
            bars.append((f"ours {size}", e["ours"]["steps_s"]))
            if "runbook" in e:
                bars.append((f"runbook {size}", e["runbook"]["steps_s"]))
        fig, ax = plt.subplots(figsize=(9, 0.6 * len(bars) + 2.2))
        colours = plt.get_cmap("tab10")
        seen: dict[str, object] = {}
        for y, (label, steps) in enumerate(bars):
            left = 0.0
            for step, seconds in steps.items():
                colour = seen.setdefault(step, colours(len(seen) % 10))
                ax.barh(y, seconds, left=left, color=colour, label=step if step not in ax.get_legend_handles_labels()[1] else None)
                left += seconds
        ax.set_yticks(range(len(bars)), [b[0] for b in bars])
        ax.invert_yaxis()
        ax.set_xlabel("seconds after the notice")
        ax.set_title(f"One migration, step by step - {title}")
        ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.28))
        fig.tight_layout()
        path = directory / "migration.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    ev, sw = watch.get("evictions"), watch.get("sweep")
    if ev or sw:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        if sw:
            nodes = sorted(sw, key=int)
            axes[0].plot([int(n) for n in nodes], [sw[n]["median_s"] for n in nodes], marker="o")
            axes[0].set_xlabel("nodes swept")
            axes[0].set_ylabel("seconds")
            axes[0].set_title("probe sweep")
        if ev:
            many = ev.get("at_once", 8)
            axes[1].bar(["1 eviction", f"{many} at once", f"{many} x serial"],
                        [ev["one"]["all_running_after_s"] or 0, ev["eight"]["all_running_after_s"] or 0,
                         many * (ev["one"]["all_running_after_s"] or 0)], color=["#4c78a8", "#f58518", "#bab0ac"])
            axes[1].set_ylabel("seconds until all run again")
            axes[1].set_title("evictions at once")
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path = directory / "scaling.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and short periods (CI): checks the code only")
    parser.add_argument("--out", type=Path, default=BENCH, help="where results.md, results.json and plots/ go")
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run (comma-separated)")
    parser.add_argument("--net", type=int, default=60, help="third octet of the fleets' loopback addresses (uses 3)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the report and plots again from DIR/out/*.json (the last run)")
    args = parser.parse_args()
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in only if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    raw = args.out / "out"
    raw.mkdir(parents=True, exist_ok=True)
    mach, date = machine(), time.strftime("%Y-%m-%d")
    durations, parts = {}, {}
    if args.report_only:
        previous = json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").exists() else {}
        durations = {k: float(v) for k, v in previous.get("durations_s", {}).items()}
        mach, date = previous.get("machine", mach), previous.get("date", date)
    for name in only:
        _, full, smoke = PARTS[name]
        if not args.report_only:
            (raw / OUTPUTS[name]).unlink(missing_ok=True)  # never report a previous run's figures as this one's
            durations[name] = run_part(name, smoke if args.smoke else full, raw, args.net)
        parts[name] = json.loads((raw / OUTPUTS[name]).read_text())
    if not args.smoke:
        # --only reruns some parts: the others' last figures stay in the report (each says its own date).
        previous = json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").exists() else {}
        for name in PARTS:
            if name not in parts and (raw / OUTPUTS[name]).exists():
                parts[name] = json.loads((raw / OUTPUTS[name]).read_text())
                if name in previous.get("durations_s", {}):
                    durations.setdefault(name, float(previous["durations_s"][name]))
    figs = figures(parts, mach, date, args.smoke)
    report = {"machine": mach, "date": date, "smoke": args.smoke, "durations_s": {k: round(v) for k, v in durations.items()},
              **figs, "parts": parts}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(figs, parts, mach, date, args.smoke, durations))
    written = plots(parts, args.out / "plots", f"{mach.split(',')[0]}, {date}")
    print()
    print((args.out / "results.md").read_text())
    print(f"written: {args.out / 'results.md'}, {args.out / 'results.json'}, " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
