"""The watcher's AWX / Automation Controller mode against a local server that answers with the controller API's
documented shapes: the exact requests, both API roots, ignored_fields refused, job events turned into ledger
states, a restarted watcher following the job already launched, and the token kept out of everything written."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
import yaml

from spot_migration import module_utils
from spot_migration.watch.app import Watcher
from spot_migration.watch.config import load
from spot_migration.watch.controller import Controller, ControllerError, read_token
from spot_migration.watch.ledger import Ledger
from tests.helpers.fake_awx import FakeAWX

TOKEN = "awx-token-0123456789abcdef"
SECRET = "a-watcher-secret-that-is-long-enough-0123"
EVENTS = [
    {"event": "playbook_on_task_start", "event_data": {"task": "Ask each workload for an emergency checkpoint"}},
    {"event": "runner_on_ok", "event_data": {"task": "t1", "host": "node1", "res": {
        "migration": {"id": "m", "step": "checkpointed", "workloads": {"train": {"emergency_ok": True}}}}}},
    {"event": "runner_on_ok", "event_data": {"task": "t2", "host": "localhost", "res": {
        "reservations": [{"owner": "m/train", "name": "train", "target": "standby1", "gpus": [0]}]}}},
    {"event": "runner_on_ok", "event_data": {"task": "t3", "host": "node1", "res": {
        "migration": {"id": "m", "step": "transferred", "workloads": {"train": {"step": 40, "target": "standby1"}}}}}},
    {"event": "runner_on_ok", "event_data": {"task": "t4", "host": "standby1", "res": {
        "migration": {"id": "m", "step": "started", "target": "standby1", "workloads": {"train": {"migration_id": "m"}}}}}},
]


def calls(fake: FakeAWX) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in fake.requests]


def test_launch_and_follow_exact_requests():
    with FakeAWX(events=EVENTS) as fake:
        controller = Controller(fake.url, TOKEN, "spot-migration migrate", poll_interval=0.01)
        job = controller.launch({"source": "node1", "migration_id": "m-1"})
        seen: list[dict] = []
        status = controller.follow(job, on_event=seen.append)
    assert job == 42 and status == "successful"
    assert calls(fake)[:3] == [("GET", "/api/"), ("GET", "/api/v2/job_templates/"),
                               ("POST", "/api/v2/job_templates/7/launch/")]
    assert fake.requests[1]["query"] == {"name": ["spot-migration migrate"]}
    assert fake.requests[2]["json"] == {"extra_vars": {"source": "node1", "migration_id": "m-1"}}
    rest = calls(fake)[3:]
    assert set(rest) == {("GET", "/api/v2/jobs/42/"), ("GET", "/api/v2/jobs/42/job_events/")}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in fake.requests)
    # Every job event exactly once, in order, asking only for the ones after the last seen.
    assert [e["id"] for e in seen] == list(range(1, len(EVENTS) + 1))
    assert [e["event_data"] for e in seen] == [e["event_data"] for e in EVENTS]
    event_queries = [r["query"] for r in fake.requests if r["path"].endswith("/job_events/")]
    assert event_queries[0]["id__gt"] == ["0"] and event_queries[0]["order_by"] == ["id"]
    assert int(event_queries[-1]["id__gt"][0]) > 0


def test_aap_gateway_api_root():
    with FakeAWX(prefix="/api/controller/v2/") as fake:
        controller = Controller(fake.url, TOKEN, 7, poll_interval=0.01)
        assert controller.follow(controller.launch({"source": "node2"})) == "successful"
    assert calls(fake)[:2] == [("GET", "/api/"), ("POST", "/api/controller/v2/job_templates/7/launch/")]
    assert all(r["path"].startswith("/api/controller/v2/") for r in fake.requests[1:])


def test_explicit_api_path_skips_discovery():
    with FakeAWX(prefix="/api/controller/v2/") as fake:
        Controller(fake.url, TOKEN, 7, api_path="/api/controller/v2/").launch({"source": "node2"})
    assert calls(fake) == [("POST", "/api/controller/v2/job_templates/7/launch/")]


def test_ignored_fields_is_an_error_and_the_job_is_cancelled():
    with FakeAWX(ignored={"extra_vars": {"source": "node1"}}) as fake:
        controller = Controller(fake.url, TOKEN, "spot-migration migrate")
        with pytest.raises(ControllerError, match="ignored extra_vars.*Prompt on launch.*job 42 was cancelled"):
            controller.launch({"source": "node1"})
    assert calls(fake)[-1] == ("POST", "/api/v2/jobs/42/cancel/")
    assert fake.jobs[42]["cancelled"]


def test_unknown_template_and_http_errors_are_named():
    with FakeAWX() as fake:
        with pytest.raises(ControllerError, match="job template 'nope': 0 found"):
            Controller(fake.url, TOKEN, "nope").launch({})
        with pytest.raises(ControllerError, match=r"HTTP 404"):
            Controller(fake.url, TOKEN, 99, api_path="/api/v2/").launch({})


def test_cancel_when_told_and_report_canceled():
    with FakeAWX(events=EVENTS, polls=10_000) as fake:
        controller = Controller(fake.url, TOKEN, 7, poll_interval=0.01)
        job = controller.launch({})
        assert controller.follow(job, cancel=lambda: True) == "canceled"
    assert ("POST", f"/api/v2/jobs/{job}/cancel/") in calls(fake)


def test_token_file_private_or_environment_popped(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    with pytest.raises(ControllerError, match="mode 0644"):
        read_token(str(token_file), "X")
    token_file.chmod(0o600)
    assert read_token(str(token_file), "X") == TOKEN
    monkeypatch.setenv("SPOT_TEST_TOKEN", TOKEN)
    assert read_token(None, "SPOT_TEST_TOKEN") == TOKEN
    assert "SPOT_TEST_TOKEN" not in os.environ
    with pytest.raises(ControllerError, match="SPOT_TEST_TOKEN"):
        read_token(None, "SPOT_TEST_TOKEN")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_watcher(tmp_path: Path, fake: FakeAWX, monkeypatch) -> Watcher:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"spot": {"hosts": {"node1": {}, "node2": {}}},
                                                              "standby": {"hosts": {"standby1": {}}}}}}))
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    monkeypatch.setenv("SPOT_MIGRATION_CONTROLLER_TOKEN", TOKEN)
    config = load(None, inventory=str(inventory), listen=f"127.0.0.1:{free_port()}", state_dir=str(tmp_path / "state"),
                  secret_file=str(secret), controller={"url": fake.url, "poll_interval": 0.05})
    config.sweep.hosts = "none"
    config.replication.enabled = False
    return Watcher(config, log=lambda message: None)


def push_notice(watcher: Watcher, node: str, notice_id: str) -> httpx.Response:
    signing = module_utils("_signing")
    body = json.dumps({"type": "notice", "node": node, "notice": {
        "evicting": True, "provider": "aws", "kind": "spot_interruption", "notice_id": notice_id,
        "action": "terminate", "deadline": None}, "detected_epoch": time.time()}).encode()
    headers = dict(signing.sign(signing.load_secret(SECRET), body), **{"Content-Type": "application/json"})
    return httpx.post(watcher.server.url + "/v1/events", content=body, headers=headers, timeout=10)


def wait_state(watcher: Watcher, states: tuple[str, ...], timeout: float = 20) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        rows = watcher.ledger.migrations()
        if rows and rows[0]["state"] in states:
            return rows[0]
        time.sleep(0.05)
    raise AssertionError(f"no migration reached {states}: {watcher.ledger.migrations()}")


def test_watcher_runs_the_migration_as_a_controller_job(tmp_path, monkeypatch):
    with FakeAWX(events=EVENTS) as fake:
        watcher = make_watcher(tmp_path, fake, monkeypatch)
        watcher.start()
        try:
            assert push_notice(watcher, "node1", "aws-awx0001").status_code == 202
            m = wait_state(watcher, ("running", "failed"))
        finally:
            watcher.stop()
    assert m["state"] == "running", m
    assert m["workloads"] == ["train"] and m["targets"] == {"train": "standby1"} and m["steps"] == {"train": 40}
    states = [t["state"] for t in Ledger(watcher.config.ledger_path).transitions(m["id"])]
    assert states[-6:] == ["checkpointed", "target_reserved", "transferring", "verified", "resuming", "running"]
    launches = [r for r in fake.requests if r["path"].endswith("/launch/")]
    assert len(launches) == 1
    extra = launches[0]["json"]["extra_vars"]
    assert extra["source"] == "node1" and extra["migration_id"] == m["id"] and extra["migration_fence"] == str(m["fence"])
    assert not {"fence_file", "spot_record_dir", "spot_reservation_file"} & set(extra)
    assert watcher.ledger.last_job(m["id"]) == 42
    # The token is in no file the watcher wrote (ledger, runs, records) and not in its environment any more.
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_failed_job_fails_the_migration_with_the_task_error(tmp_path, monkeypatch):
    failing = [*EVENTS[:3], {"event": "runner_on_failed", "event_data": {
        "task": "Reserve GPUs on a target for each workload", "host": "localhost", "res": {"msg": "no capacity"}}}]
    with FakeAWX(events=failing, final="failed") as fake:
        watcher = make_watcher(tmp_path, fake, monkeypatch)
        watcher.start()
        try:
            push_notice(watcher, "node2", "aws-awx0002")
            m = wait_state(watcher, ("running", "failed"))
        finally:
            watcher.stop()
    assert m["state"] == "failed" and "no capacity" in m["error"], m


def test_restarted_watcher_follows_the_job_already_launched(tmp_path, monkeypatch):
    with FakeAWX(events=EVENTS, polls=30) as fake:
        watcher = make_watcher(tmp_path, fake, monkeypatch)
        # What a watcher that died left: a claimed migration, a job launched in the controller and still running.
        earlier = Ledger(watcher.config.ledger_path, lease=0.01)
        notice = {"evicting": True, "provider": "aws", "kind": "spot_interruption", "notice_id": "aws-awx0003"}
        earlier.record_notice("node1", notice, "push", time.time())
        mid = earlier.open_migration("aws-awx0003", "node1", None, time.time())[1]
        fence = earlier.claim(mid)
        earlier.advance(mid, fence, "checkpointing")
        job = Controller(fake.url, TOKEN, 7, api_path="/api/v2/").launch({"source": "node1", "migration_id": mid})
        earlier.note_job(mid, fence, job)
        earlier.close()
        watcher.start()
        try:
            m = wait_state(watcher, ("running", "failed"), timeout=30)
        finally:
            watcher.stop()
    assert m["state"] == "running" and m["attempts"] == 2, m
    assert len([r for r in fake.requests if r["path"].endswith("/launch/")]) == 1  # followed, not launched again
    assert m["targets"] == {"train": "standby1"}  # from the job's events, read by the new watcher
