"""Event-Driven Ansible with the real ansible-rulebook on a local fleet: agent push -> event source -> rulebook ->
spot.migration.migrate -> the workload resumed on another node; a forged push refused; the same notice pushed
again and again fires one migration; a blind node alerts once. Every process is stopped by pid (group) at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from spot_migration import fleet as fleet_mod
from spot_migration import module_utils
from tests.helpers.fleet import free_port, play_runner, wait_for, webhook_server, worker_base

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def efleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eda-fleet")
    fleet = fleet_mod.up(directory, nodes=3, standby=1, base_address=worker_base(175), image=False,
                         log=lambda *_: None)
    try:
        yield fleet
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


class Rulebook:
    """ansible-rulebook with spot.migration.migrate_on_notice, in its own process group (killed whole at the end)."""

    def __init__(self, fleet, workdir: Path, env: dict, webhook: str):
        self.port = free_port()
        self.secret_file = workdir / "secret"
        self.secret_file.write_text(os.urandom(32).hex())
        self.secret_file.chmod(0o600)
        self.secret = module_utils("_signing").load_secret(self.secret_file.read_text())
        variables = workdir / "spot-eda.yml"
        variables.write_text(yaml.safe_dump({
            "spot_listen_host": "127.0.0.1", "spot_listen_port": self.port,
            "spot_secret_file": str(self.secret_file), "spot_alert_webhooks": [webhook]}))
        self.log_path = workdir / "rulebook.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "ansible-rulebook"), "-r", "spot.migration.migrate_on_notice", "-i", str(fleet.inventory_path),
             "--vars", str(variables), "-v"], cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self.healthy, 90, "ansible-rulebook's event source to listen")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.text()[-4000:]
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def runs(self, playbook: str) -> int:
        """How many times the rulebook started ``playbook`` (ansible-playbook prints one banner per run)."""
        first_play = {"spot.migration.migrate": "PLAY [Plan the migration]", "spot.migration.alert": "PLAY [Alert]"}
        return self.text().count(first_play[playbook])

    def push(self, payload: dict, secret: bytes | None = None) -> httpx.Response:
        signing = module_utils("_signing")
        body = json.dumps(payload).encode()
        headers = dict(signing.sign(secret or self.secret, body), **{"Content-Type": "application/json"})
        return httpx.post(self.url + "/v1/events", content=body, headers=headers, timeout=10)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # playbooks it started, too
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def rulebook(efleet, ansible_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eda")
    with webhook_server() as (url, received):
        env = dict(ansible_env, HOME=str(workdir))  # records and reservations of the migrate playbook land here
        book = Rulebook(efleet, workdir, env, url)
        book.received = received
        try:
            yield book
        finally:
            book.stop()


@pytest.fixture
def eplay(efleet, ansible_env, tmp_path):
    return play_runner(efleet, ansible_env, tmp_path)


def progress(fleet, node: str, name: str) -> dict:
    path = Path(fleet.node(node).paths["checkpoints"]) / name / "progress.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_notice_pushed_by_the_agent_moves_the_workload(efleet, rulebook, eplay):
    name = "eda-train"
    eplay({"hosts": "spot", "gather_facts": False, "roles": [{
        "role": "spot.migration.eviction_agent", "eviction_agent_watcher_url": rulebook.url,
        "eviction_agent_secret": rulebook.secret.decode(), "eviction_agent_runtimes": ["process"],
        "eviction_agent_service_manager": "background"}]})
    ck = "{{ spot_checkpoint_root }}/" + name
    eplay([{"spot.migration.workload": {
        "name": name, "runtime": "process", "gpus": 1, "checkpoint_dir": ck,
        "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
        "args": ["--checkpoint-dir", ck, "--step-time", "0.01", "--every", "300", "--progress", ck + "/progress.json"],
        "workload_root": "{{ spot_workload_root }}"}},
        {"spot.migration.checkpoint_info": {"path": ck, "wait_timeout": 30}}])
    try:
        fleet_mod.inject(efleet.dir, "node1", "spot_interruption")
        record = wait_for(lambda: [r for r in rulebook.received if r.get("source") == "node1"], 240,
                          "the migration's webhook")[0]
        row = record["migrations"][0]
        assert row["workload"] == name and row["target"] != "node1", row
        resumed = wait_for(lambda: progress(efleet, row["target"], name).get("resumed_from") is not None and
                           progress(efleet, row["target"], name), 60, "the trainer resuming on the target")
        assert resumed["resumed_from"] == row["checkpoint_step"] > 0
        # The source copy is gone: never two copies.
        where = eplay([{"spot.migration.workload_info": {"workload_root": "{{ spot_workload_root }}"},
                        "register": "found"}, {"ansible.builtin.debug": {"var": "found.workloads"}}], hosts="node1")
        assert name not in where.stdout
        assert rulebook.runs("spot.migration.migrate") == 1

        # The same notice again, signed properly each time (agents re-push after losing their state): one migration.
        notice_id = row.get("notice_id") or record.get("notice", {}).get("notice_id")
        state = json.loads((Path(efleet.node("node1").paths["state"]) / "eviction-agent" / "state" / "state.json")
                           .read_text())
        entry = next(iter(state["notices"].values()))
        assert notice_id in (None, entry["notice"]["notice_id"])
        for attempt in range(5):
            answer = rulebook.push({"type": "notice", "node": "node1", "notice": entry["notice"],
                                    "detected_at": entry["detected_at"], "signalled_epoch": entry.get("signalled_epoch")})
            assert answer.status_code == 202
        time.sleep(8)
        assert rulebook.runs("spot.migration.migrate") == 1, rulebook.text()[-3000:]
    finally:
        fleet_mod.inject(efleet.dir, "node1", "clear")
        eplay([{"spot.migration.workload": {"name": name, "runtime": "process", "state": "absent",
                                            "workload_root": "{{ spot_workload_root }}"}}], hosts="all")


def test_forged_push_is_refused_and_fires_nothing(efleet, rulebook):
    before = rulebook.runs("spot.migration.migrate")
    notice = {"evicting": True, "provider": "gcp", "kind": "preempt", "notice_id": "gcp-forged-1", "action": "stop"}
    forged = rulebook.push({"type": "notice", "node": "node2", "notice": notice},
                           secret=b"someone-elses-secret-long-enough")
    assert forged.status_code == 401 and forged.json()["reason"] == "forged"
    unsigned = httpx.post(rulebook.url + "/v1/events", json={"type": "notice", "node": "node2", "notice": notice})
    assert unsigned.status_code == 401 and unsigned.json()["reason"] == "unsigned"
    time.sleep(3)
    assert rulebook.runs("spot.migration.migrate") == before


def test_blind_node_alerts_once(efleet, rulebook):
    before = len(rulebook.received)
    for blind in (True, True, False, True):
        answer = rulebook.push({"type": "heartbeat", "node": "node3", "blind": blind, "provider": "azure",
                                "error": "HTTP 500 from the metadata service" if blind else None})
        assert answer.status_code == 202
    alerts = wait_for(lambda: [r for r in rulebook.received[before:] if "blind" in str(r.get("text", ""))], 90,
                      "the blind alert")
    time.sleep(5)
    assert len([r for r in rulebook.received[before:] if "blind" in str(r.get("text", ""))]) == 1
    assert "node3" in alerts[0]["text"] and "HTTP 500" in alerts[0]["text"]
    assert rulebook.runs("spot.migration.alert") == 1
