"""ansible-playbook spot.migration.migrate on the local fleet: a real notice, real SSH, rsync between nodes,
real workloads resumed from the verified checkpoint; failure paths; check mode and re-runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spot_migration import fleet as fleet_mod


def _progress(fleet, node: str, name: str) -> dict:
    return json.loads((Path(fleet.node(node).paths["checkpoints"]) / name / "progress.json").read_text())


def _play(stdout: str, name: str) -> str:
    """One play's part of ansible-playbook's output."""
    start = stdout.index(f"PLAY [{name}]")
    end = stdout.find("PLAY [", start + 1)
    return stdout[start:end if end > 0 else None]


@pytest.mark.parametrize("source, runtime, notice, lean", [
    ("node1", "process", "spot_interruption", True),  # AWS
    ("node2", "podman", "preempt", True),             # GCP
    ("node3", "process", "terminate", True),          # Azure
    ("node1", "process", "spot_interruption", False),  # the modules themselves, not their lean runs
])
def test_full_migration(fleet, migrations, webhook, source, runtime, notice, lean):
    url, received = webhook
    name = f"mig-{source}-{runtime}" + ("" if lean else "-modules")
    migrations.deploy(source, name, runtime)
    fleet_mod.inject(fleet.dir, source, notice)
    result = migrations.migrate(source, "-vvv", "-e", json.dumps({"alert_webhooks": [url], "spot_lean_modules": lean}))
    ran_lean = re.findall(r"spot\.migration\.(migration_source|migration_target) runs lean", result.stdout)
    assert (set(ran_lean) == {"migration_source", "migration_target"}) if lean else not ran_lean
    assert "standby1" in result.stdout
    # The standby node could take it: the other spot nodes were never asked.
    asked = _play(result.stdout, "Emergency checkpoints on the sources, the candidates described meanwhile")
    others = {"node1", "node2", "node3"} - {source}
    assert "[standby1]" in asked and not [n for n in others if f"[{n}]" in asked], asked
    assert "skipping: no hosts matched" in _play(result.stdout, "Describe the other candidate targets")
    [record] = migrations.records_written()
    [row] = record["migrations"]
    assert row["workload"] == name and row["source"] == source and row["target"] == "standby1"
    assert row["provider"] == fleet.node(source).cloud and row["emergency_checkpoint_ok"] is True
    assert row["bytes"] > 0 and row["checkpoint_step"] > 0 and row["first_new_step"] > row["checkpoint_step"]
    for key in ("notice_at", "checkpoint_verified_at", "transferred_at", "resumed_at"):
        assert row[key], key
    # Running on the target, resumed exactly from the verified step; nowhere else.
    assert migrations.where(name) == {"standby1": True}
    progress = _progress(fleet, "standby1", name)
    assert progress["resumed_from"] == row["checkpoint_step"]
    assert received and received[0]["migrations"][0]["workload"] == name and name in received[0]["text"]


def test_check_mode_plans_then_real_then_rerun_changes_nothing(fleet, migrations):
    name = "mig-idem"
    migrations.deploy("node1", name)
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    plan = migrations.migrate("node1", "--check")
    assert f"{name}: node1 -> standby1" in plan.stdout
    assert f"would move {name}: checkpoint" in plan.stdout and "bytes" in plan.stdout
    assert migrations.where(name) == {"node1": True}, "check mode moved nothing"
    assert migrations.records_written() == []
    migrations.migrate("node1")
    assert migrations.where(name) == {"standby1": True}
    again = migrations.migrate("node1")
    recap = again.stdout[again.stdout.index("PLAY RECAP"):]
    assert all(" changed=0 " in line for line in recap.splitlines() if "ok=" in line), recap
    assert "nothing to move" in again.stdout
    assert len(migrations.records_written()) == 1


def test_no_capacity_fails_and_leaves_the_workload_running(fleet, migrations):
    name = "mig-big"
    migrations.deploy("node1", name, gpus=2)
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    # Every other node is busy: two GPUs needed, at most one free anywhere else.
    migrations.deploy("standby1", "filler-a", gpus=1)
    migrations.deploy("node2", "filler-b", gpus=1)
    migrations.deploy("node3", "filler-c", gpus=1)
    result = migrations.migrate("node1", check=False)
    assert result.returncode != 0
    assert "no target has capacity for 2 GPU(s)" in result.stdout
    assert "standby1: 1 usable free GPU(s), 2 needed" in result.stdout
    assert migrations.where(name) == {"node1": True}, "the workload keeps running on the source"


def test_a_full_standby_node_means_the_other_candidates_are_asked(fleet, migrations):
    name = "mig-standby-full"
    migrations.deploy("node1", name)
    migrations.deploy("standby1", "filler-standby", gpus=2)
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    result = migrations.migrate("node1")
    later = _play(result.stdout, "Describe the other candidate targets")
    assert "ok: [node2]" in later and "ok: [node3]" in later, later
    [row] = migrations.records_written()[0]["migrations"]
    assert row["target"] in ("node2", "node3") and row["outcome"] == "running", row
    assert migrations.where(name) == {row["target"]: True}
    assert _progress(fleet, row["target"], name)["resumed_from"] == row["checkpoint_step"]


def test_late_checkpoint_falls_back_to_the_newest_on_disk(fleet, migrations):
    name = "mig-late"
    # A job that cannot checkpoint on demand and checkpoints rarely: at start, on SIGTERM and every ~15 s (after the
    # emergency window; progress on the target must be a step beyond the resumed one, so it needs one).
    migrations.deploy("node2", name, extra=["--ignore-checkpoint-signal", "--initial-checkpoint", "--every", "1500"])
    fleet_mod.inject(fleet.dir, "node2", "preempt")
    result = migrations.migrate("node2", "-e", "deadline=8")
    [record] = migrations.records_written()
    row = record["migrations"][0]
    assert (f"the newest complete checkpoint on disk (step {row['checkpoint_step']}) moved instead"
            in result.stdout), result.stdout[-3000:]
    assert row["emergency_checkpoint_ok"] is False and row["stopped_by"] == "SIGTERM"
    assert row["checkpoint_step"] > 0, "the checkpoint written on SIGTERM, not the initial one"
    assert migrations.where(name) == {"standby1": True}
    assert _progress(fleet, "standby1", name)["resumed_from"] == row["checkpoint_step"]


@pytest.mark.parametrize("transfer", ["relay", "shared"])
def test_relay_and_shared_transfer(fleet, migrations, transfer):
    name = f"mig-{transfer}"
    migrations.deploy("node3", name)
    fleet_mod.inject(fleet.dir, "node3", "terminate")
    migrations.migrate("node3", "-e", f"transfer={transfer}")
    [record] = migrations.records_written()
    row = record["migrations"][0]
    assert migrations.where(name) == {"standby1": True}
    expected_root = fleet.node("node3" if transfer == "shared" else "standby1").paths["checkpoints"]
    assert row["resumed_from"].startswith(expected_root)
    assert _progress(fleet, "node3" if transfer == "shared" else "standby1", name)["resumed_from"] == row["checkpoint_step"]


def test_two_simultaneous_migrations_take_different_gpus(fleet, migrations):
    migrations.deploy("node1", "mig-twin-a")
    migrations.deploy("node2", "mig-twin-b")
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    fleet_mod.inject(fleet.dir, "node2", "preempt")
    procs = [migrations.migrate(src, "-e", "target=standby1", background=True) for src in ("node1", "node2")]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-4000:] for o in outputs)
    specs = [json.loads((Path(fleet.node("standby1").paths["workloads"]) / n / "spec.json").read_text())
             for n in ("mig-twin-a", "mig-twin-b")]
    assert sorted(s["gpus"][0] for s in specs) == [0, 1], specs


def test_deploy_places_on_the_best_node_and_capacity_shows_it(fleet, migrations):
    name = "dep-first"
    migrations.names.append(name)
    ck = os.path.join(fleet.node("standby1").paths["checkpoints"], name)
    workload = {"name": name, "command": ["{{ ansible_python_interpreter }}", fleet.trainer],
                "args": ["--checkpoint-dir", ck, "--step-time", "0.05"], "checkpoint_dir": ck, "gpus": 1}
    cmd = ["-e", json.dumps({"workload": workload, "spot_reservation_file": str(migrations.reservations)})]
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(fleet.inventory_path),
                             "spot.migration.deploy", *cmd], env=migrations.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-5000:]
    assert f"{name} -> standby1 (GPUs 0)" in result.stdout
    assert migrations.where(name) == {"standby1": True}
    table = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(fleet.inventory_path),
                            "spot.migration.capacity"], env=migrations.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300, check=False).stdout
    assert "standby1     standby   2    1     1" in table


def test_a_deploy_that_fails_to_start_leaves_no_reservation(fleet, migrations):
    name = "dep-broken"
    migrations.names.append(name)
    workload = {"name": name, "command": ["/nonexistent/trainer"], "gpus": 1}
    cmd = ["-e", json.dumps({"workload": workload, "spot_reservation_file": str(migrations.reservations)})]
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(fleet.inventory_path),
                             "spot.migration.deploy", *cmd], env=migrations.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
    assert result.returncode != 0 and "/nonexistent/trainer" in result.stdout, result.stdout[-3000:]
    assert "Release the reservation" in result.stdout      # reserved, then given up although the start failed
    held = json.loads(migrations.reservations.read_text()) if migrations.reservations.exists() else {}
    assert f"deploy/{name}" not in held, held


def test_target_lost_mid_transfer_moves_on_to_the_next_target(fleet, migrations):
    name = "mig-lost-target"
    migrations.deploy("node1", name)
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    # node1 can no longer reach standby1 (as if it died under the transfer); the controller still sees it.
    config = Path(fleet.node("node1").paths["ssh_config"])
    original = config.read_text()
    standby = fleet.node("standby1")
    config.write_text(original.replace(f"  Port {standby.port}\n", "  Port 9\n", 1))
    try:
        result = migrations.migrate("node1")
    finally:
        config.write_text(original)
    assert f"transfer of {name} to standby1 failed" in result.stdout
    [record] = migrations.records_written()
    row = record["migrations"][0]
    assert row["failed_targets"] == ["standby1"] and row["target"] in ("node2", "node3")
    assert migrations.where(name) == {row["target"]: True}
    assert _progress(fleet, row["target"], name)["resumed_from"] == row["checkpoint_step"]
    assert not list(Path(standby.paths["checkpoints"]).glob(".spot-staging/*")), "staging on the lost target cleaned"


def test_a_long_transfer_shows_its_progress(fleet, migrations):
    """The release step's transfer reports rsync's running total in the play output while it runs (the thresholds
    lowered so a transfer of half a GiB on loopback is "long"; rsync reports once a second), and leaves no progress
    file behind."""
    name = "mig-progress"
    migrations.deploy("node1", name, extra=["--every", "400", "--size-mb", "500", "--initial-checkpoint"])
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    result = migrations.migrate("node1", "-e", "spot_transfer_progress_after=0", "-e", "spot_transfer_progress_every=0.1",
                                "-e", "spot_ssh_ciphers=aes128-ctr")
    lines = re.findall(r"^node1: %s (\d+)/(\d+) MiB \((\d+)%%, (\S+/s)\)$" % name, result.stdout, re.M)
    assert lines, result.stdout[-4000:]
    done, total, percent, _rate = lines[-1]
    assert int(total) >= 450 and 0 <= int(percent) <= 100 and int(done) <= int(total)
    [record] = migrations.records_written()
    assert record["migrations"][0]["outcome"] == "running"
    # /tmp is every node's here (and other workers' migrations run at the same time): only this workload's count
    assert not [p for p in Path("/tmp").glob(".spot-migration-progress-*.json") if _progress_of(p) == name]


def _progress_of(path):
    try:
        return json.loads(path.read_text()).get("workload")
    except (OSError, ValueError):
        return None  # gone or being replaced: another transfer's


def test_unreachable_source_fails_loudly(fleet, migrations, tmp_path):
    import yaml
    inventory = yaml.safe_load(fleet.inventory_path.read_text())
    inventory["all"]["children"]["spot"]["hosts"]["node3"]["ansible_port"] = 9
    broken = tmp_path / "inventory.yml"
    broken.write_text(yaml.safe_dump(inventory))
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(broken),
                             "spot.migration.migrate", "-e", "source=node3", "-e", f"spot_record_dir={migrations.records}",
                             "-e", f"spot_reservation_file={migrations.reservations}"],
                            env=migrations.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=300, check=False)
    assert result.returncode != 0
    assert "source node3 was unreachable before the emergency checkpoint: nothing was moved" in result.stdout
    assert "nothing to move" not in result.stdout and migrations.records_written() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system to fill needs root")
def test_target_disk_full_mid_transfer_moves_on_to_the_next_target(fleet, migrations):
    name = "mig-disk-full"
    migrations.deploy("node2", name, extra=["--every", "40", "--size-mb", "4"])
    fleet_mod.inject(fleet.dir, "node2", "preempt")
    staging = Path(fleet.node("standby1").paths["checkpoints"]) / ".spot-staging"
    staging.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(staging)], check=True)
    try:
        result = migrations.migrate("node2")
        leftovers = list(staging.iterdir())
    finally:
        subprocess.run(["umount", str(staging)], check=False)
    assert f"transfer of {name} to standby1 failed" in result.stdout and "No space left on device" in result.stdout
    row = migrations.records_written()[0]["migrations"][0]
    assert row["failed_targets"] == ["standby1"] and row["target"] in ("node1", "node3")
    assert migrations.where(name) == {row["target"]: True}
    assert leftovers == [], "the partial copy on the full target was cleaned up"


def test_notice_cancelled_mid_migration_finishes_the_move(fleet, migrations):
    name = "mig-cancelled"
    migrations.deploy("node3", name)
    fleet_mod.inject(fleet.dir, "node3", "terminate")
    proc = migrations.migrate("node3", background=True)
    time.sleep(4)
    fleet_mod.inject(fleet.dir, "node3", "clear")  # the cloud changed its mind
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-4000:]
    assert migrations.where(name) == {"standby1": True}, "the migration finishes: one copy, on the target"


# A fine-tuning job with a frozen base model (LoRA-style): every checkpoint is a Hugging Face `checkpoint-<step>/`
# directory whose big base shard is the same file (hard-linked from the previous checkpoint), only the small adapter
# shard and trainer_state.json are new. Checkpoints at start and on SIGUSR1 / SIGTERM (then exit).
FROZEN_BASE_JOB = r'''
import json, os, signal, sys, time
ck = sys.argv[1]
os.makedirs(ck, exist_ok=True)
resume = sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else None
first = json.load(open(os.path.join(resume, "trainer_state.json")))["global_step"] if resume else 0
start = time.time() - first * 0.01


def shard(path, data):
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header + data)


def save():
    done = sorted((d for d in os.listdir(ck) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    step = max([int((time.time() - start) / 0.01)] + [int(d.split("-")[1]) + 1 for d in done])
    base = os.path.join(ck, done[-1], "base.safetensors") if done else resume and os.path.join(resume, "base.safetensors")
    tmp = os.path.join(ck, ".tmp-%d" % step)
    os.mkdir(tmp)
    if base:
        os.link(base, os.path.join(tmp, "base.safetensors"))
    else:
        shard(os.path.join(tmp, "base.safetensors"), os.urandom(8 << 20))
    shard(os.path.join(tmp, "adapter.safetensors"), os.urandom(64 << 10))
    json.dump({"global_step": step}, open(os.path.join(tmp, "trainer_state.json"), "w"))
    os.rename(tmp, os.path.join(ck, "checkpoint-%d" % step))
    json.dump({"step": step, "resumed_from": first if resume else None}, open(os.path.join(ck, "progress.tmp"), "w"))
    os.rename(os.path.join(ck, "progress.tmp"), os.path.join(ck, "progress.json"))


signal.signal(signal.SIGUSR1, lambda *a: save())
signal.signal(signal.SIGTERM, lambda *a: (save(), sys.exit(0)))
save()
while True:
    time.sleep(0.2)
'''


def test_a_replica_on_the_target_means_only_what_changed_moves(fleet, migrations, fleet_play, tmp_path):
    """Fast path at a notice: the target already holds a verified replica (continuous replication); the frozen base
    shard is hard-linked from it on the target, only the adapter and trainer state are sent, and the job resumes from
    the newest checkpoint (the one written at the notice), verified."""
    name = "mig-frozen"
    job = Path(fleet.node("node1").paths["checkpoints"]).parent / "frozen_base_job.py"
    job.write_text(FROZEN_BASE_JOB)
    ck = os.path.join(fleet.node("node1").paths["checkpoints"], name)
    migrations.names.append(name)
    fleet_play([{"spot.migration.workload": {
        "name": name, "runtime": "process", "gpus": 1, "checkpoint_dir": ck, "workload_root": "{{ spot_workload_root }}",
        "command": ["{{ ansible_python_interpreter }}", str(job)], "args": [ck]}},
        {"spot.migration.checkpoint_info": {"path": ck, "wait_timeout": 20}}], hosts="node1")
    root = Path(fleet.node("standby1").paths["checkpoints"]) / ".spot-replicas" / name
    fleet_play({"import_playbook": "spot.migration.replicate"}, extra_vars={"keep": 2, "replicate_plan": [
        {"source": "node1", "workload": name, "replica": "standby1", "checkpoint_dir": ck, "last_step": -1}]})
    replica = json.loads((root / "latest.json").read_text())
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    prestaged = {name: {"target": "standby1", "root": str(root), "step": replica["step"]}}
    migrations.migrate("node1", "-e", json.dumps({"prestaged": prestaged}))
    [record] = migrations.records_written()
    row = record["migrations"][0]
    assert row["target"] == "standby1" and row["checkpoint_step"] > replica["step"]  # the newest, not the replica
    resumed = Path(row["resumed_from"])
    assert resumed.name == f"checkpoint-{row['checkpoint_step']}"
    linked = os.stat(resumed / "base.safetensors").st_ino == os.stat(Path(replica["checkpoint"]) / "base.safetensors").st_ino
    assert linked, "the unchanged base shard was sent again instead of hard-linked from the replica"
    assert os.stat(resumed / "adapter.safetensors").st_ino != os.stat(Path(replica["checkpoint"]) / "adapter.safetensors").st_ino
    assert migrations.where(name) == {"standby1": True}
    progress = json.loads((Path(fleet.node("standby1").paths["checkpoints"]) / name / "progress.json").read_text())
    assert progress["resumed_from"] == row["checkpoint_step"]
