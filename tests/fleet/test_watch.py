"""The eviction agent and the watcher on a local fleet of their own: real agents (installed by the role),
real signed pushes, the real watcher process (killed with SIGKILL at each step), real migrations."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from spot_migration import fleet as fleet_mod
from spot_migration.sim import control
from spot_migration.watch import actions as actions_mod
from spot_migration.watch.ledger import Ledger

from tests.helpers.fleet import Migrations, free_port, play_runner, wait_for, worker_base
from tests.helpers.gang import Gang

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "spot-migration")
SIGNING = None


def _signing():
    global SIGNING  # pylint: disable=global-statement
    if SIGNING is None:
        from spot_migration import module_utils
        SIGNING = module_utils("_signing")
    return SIGNING


class Watcher:
    """One ``spot-migration watch`` process at a time; stopped by pid (and its runs by marker) at teardown."""

    def __init__(self, fleet, port: int, secret_file: Path, state_dir: Path, env: dict, webhook: str | None):
        self.fleet, self.port, self.secret_file, self.state_dir, self.env = fleet, port, secret_file, state_dir, env
        self.webhook = webhook
        self.proc: subprocess.Popen | None = None
        self.log = state_dir / "watch.log"
        self.url = f"http://127.0.0.1:{port}"

    def config(self, **sweep) -> Path:
        path = self.state_dir / "watch.yml"
        path.write_text(yaml.safe_dump({
            "inventory": str(self.fleet.inventory_path), "listen": f"127.0.0.1:{self.port}",
            "state_dir": str(self.state_dir), "secret_file": str(self.secret_file), "heartbeat_timeout": 6,
            "sweep": {"interval": 15, "hosts": "silent", **sweep},
            "replication": {"enabled": False},  # these tests are about notices; tests/fleet/test_replication.py covers it
            "alerts": {"webhooks": [self.webhook] if self.webhook else []},
            **getattr(self, "settings", {}),
        }))
        return path

    def start(self, crash_at: str | None = None, secret_in_env: bool = False, **sweep) -> None:
        assert self.proc is None or self.proc.poll() is not None, "a watcher is already running"
        config = self.config(**sweep)
        env = dict(self.env)
        if secret_in_env:
            data = yaml.safe_load(config.read_text())
            del data["secret_file"]
            config.write_text(yaml.safe_dump(data))
            env["SPOT_MIGRATION_SECRET"] = self.secret_file.read_text().strip()
        cmd = [CLI, "watch", "--config", str(config)] + (["--crash-at", crash_at] if crash_at else [])
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.healthy() or self.proc.poll() is not None, 30, "the watcher to answer /healthz")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for m in self.migrations():
            actions_mod.kill_marked(m["id"])

    def db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.state_dir / "ledger.sqlite", timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def migrations(self) -> list[dict]:
        if not (self.state_dir / "ledger.sqlite").exists():
            return []
        with self.db() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM migrations ORDER BY created_at")]
        for row in rows:
            for key in ("workloads", "targets", "steps"):
                row[key] = json.loads(row[key])
        return rows

    def notices(self) -> list[dict]:
        if not (self.state_dir / "ledger.sqlite").exists():
            return []
        with self.db() as db:
            return [dict(r) for r in db.execute("SELECT * FROM notices")]

    def node(self, name: str) -> dict:
        with self.db() as db:
            row = db.execute("SELECT * FROM nodes WHERE node = ?", (name,)).fetchone()
        return dict(row) if row else {}

    def finished(self, timeout: float = 150) -> dict:
        def done():
            rows = self.migrations()
            return rows[0] if rows and rows[0]["state"] in ("running", "failed") else None
        try:
            return wait_for(done, timeout, "the migration to finish", interval=0.3)
        except AssertionError:
            raise AssertionError(self.log.read_text()[-5000:]) from None

    def push(self, payload: dict, secret: bytes | None = None, **sign_args) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers.update(_signing().sign(secret, body, **sign_args))
        return httpx.post(self.url + "/v1/events", content=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def wfleet(tmp_path_factory, ansible_env):
    """A fleet of four (AWS, GCP, Azure spot nodes and a standby) with the eviction agent on the spot nodes."""
    directory = tmp_path_factory.mktemp("watchfleet")
    fleet = fleet_mod.up(directory, nodes=4, base_address=worker_base(100), image=False, log=lambda *_: None)
    try:
        secret_file = directory / "secret"
        secret_file.write_text(secrets.token_hex(32) + "\n")
        secret_file.chmod(0o600)
        port = free_port()
        play = play_runner(fleet, ansible_env, tmp_path_factory.mktemp("agent-plays"))
        play({"hosts": "spot", "gather_facts": False, "roles": [{
            "role": "spot.migration.eviction_agent", "eviction_agent_watcher_url": f"http://127.0.0.1:{port}",
            "eviction_agent_secret": secret_file.read_text().strip(), "eviction_agent_runtimes": ["process"]}]})
        fleet.agent_port, fleet.secret_file, fleet.play = port, secret_file, play
        yield fleet
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


def agent_state(fleet, node: str) -> dict:
    path = Path(fleet.node(node).paths["state"]) / "eviction-agent" / "state" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"notices": {}, "pending": []}


@pytest.fixture
def watcher(wfleet, ansible_env, tmp_path, webhook):
    state_dir = tmp_path / "watch-state"
    state_dir.mkdir()
    w = Watcher(wfleet, wfleet.agent_port, wfleet.secret_file, state_dir, ansible_env, webhook[0])
    w.received = webhook[1]
    try:
        yield w
    finally:
        w.stop()
        for node in ("node1", "node2", "node3"):
            fleet_mod.inject(wfleet.dir, node, "clear")
            control.clear_faults(wfleet.node(node).metadata_url)
        # Nothing of this test may still be on its way to the next test's watcher.
        wait_for(lambda: all(not agent_state(wfleet, n)["pending"] for n in ("node1", "node2", "node3")) or
                 _drop_pending(wfleet), 5, "agents to have nothing pending")


def _drop_pending(fleet) -> bool:
    """Pending pushes for a watcher that is gone: restart the agents with an empty queue."""
    for node in ("node1", "node2", "node3"):
        state = agent_state(fleet, node)
        if state["pending"]:
            for pid, ticks in fleet_mod.agent_pids(fleet.node(node))[1:]:
                if fleet_mod._alive(pid, ticks):
                    os.kill(pid, signal.SIGSTOP)
                    state["pending"] = []
                    path = Path(fleet.node(node).paths["state"]) / "eviction-agent" / "state" / "state.json"
                    path.write_text(json.dumps(state))
                    os.kill(pid, signal.SIGKILL)
    return True


@pytest.fixture
def wmig(wfleet, ansible_env, tmp_path):
    m = Migrations(wfleet, play_runner(wfleet, ansible_env, tmp_path), ansible_env, tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


def _progress(fleet, node: str, name: str) -> dict:
    return json.loads((Path(fleet.node(node).paths["checkpoints"]) / name / "progress.json").read_text())


def _assert_once(wmig, name: str, migration: dict) -> str:
    """The workload runs on exactly one node, the target, resumed from the checkpoint the migration verified."""
    where = wmig.where(name)
    running = [n for n, up in where.items() if up]
    assert running == [migration["targets"][name]], (where, migration)
    target = running[0]
    progress = wait_for(lambda: _progress(wmig.fleet, target, name), 20, "the resumed trainer's progress")
    assert progress["resumed_from"] == migration["steps"][name], (progress, migration)
    return target


def test_notice_to_migration_by_push(wfleet, watcher, wmig):
    wmig.deploy("node1", "wpush")
    watcher.start()
    injected = time.time()
    fleet_mod.inject(wfleet.dir, "node1", "spot_interruption", in_seconds=120)
    migration = watcher.finished()
    assert migration["state"] == "running", migration
    target = _assert_once(wmig, "wpush", migration)
    assert target != "node1"
    # The agent asked the workload to checkpoint before the watcher did anything, within about a second.
    entry = next(e for e in agent_state(wfleet, "node1")["notices"].values() if e["detected_epoch"] > injected)
    assert entry["signalled"] and entry["signalled"][0]["name"] == "wpush"
    assert entry["detected_epoch"] - injected < 2.5, entry
    notice = watcher.notices()[0]
    assert notice["first_via"] == "push" and notice["evicting"] == 1
    # One alert, Slack-compatible.
    wait_for(lambda: watcher.received, 10, "the alert")
    assert len(watcher.received) == 1 and "wpush -> " in watcher.received[0]["text"]
    metrics = httpx.get(watcher.url + "/metrics").text
    assert 'spot_notices_total{kind="spot_interruption",provider="aws",via="push"} 1.0' in metrics
    assert 'spot_migrations_total{outcome="running"} 1.0' in metrics
    assert "spot_migration_duration_seconds_count 1.0" in metrics
    history = json.loads(subprocess.run([CLI, "history", "--state-dir", str(watcher.state_dir), "--json"],
                                        capture_output=True, text=True, check=True, env=watcher.env).stdout)
    states = [t["state"] for t in history["migrations"][0]["transitions"]]
    assert states[0] == "noticed" and states[-1] == "running"
    assert [s for s in ("checkpointing", "target_reserved", "transferring", "verified", "resuming")
            if s not in states] == []
    status = subprocess.run([CLI, "status", "--config", str(watcher.state_dir / "watch.yml"), "--json"],
                            capture_output=True, text=True, check=True, env=watcher.env)
    data = json.loads(status.stdout)
    assert {n["node"]: n["agent"] for n in data["nodes"]} == {"node1": "ok", "node2": "ok", "node3": "ok"}
    assert data["workloads"][target] == {"wpush": True}
    _assert_no_secrets(wfleet, watcher)


def test_a_target_lost_mid_transfer_the_ledger_and_record_follow_the_job(wfleet, watcher, wmig):
    """[K] 2: the first target dies under the transfer, the next one takes the job: the ledger's migration and its
    workload location name where the job really runs, and the record (with the failed target) is written."""
    name = "wfailover"
    wmig.deploy("node1", name)
    config = Path(wfleet.node("node1").paths["ssh_config"])
    original = config.read_text()
    standby = wfleet.node("standby1")
    assert f"  Port {standby.port}\n" in original
    # node1 can no longer reach standby1 (as if it died under the transfer); the controller still sees it.
    config.write_text(original.replace(f"  Port {standby.port}\n", "  Port 9\n", 1))
    # The watcher knows the job on node1 (as its replication's listing would have told it).
    Ledger(watcher.state_dir / "ledger.sqlite").workload_seen(name, "node1", {"name": name}, 1)
    try:
        watcher.start()
        fleet_mod.inject(wfleet.dir, "node1", "spot_interruption", in_seconds=120)
        migration = watcher.finished(timeout=240)
    finally:
        config.write_text(original)
    assert migration["state"] == "running", (migration, watcher.log.read_text()[-4000:])
    target = _assert_once(wmig, name, migration)
    assert target in ("node2", "node3"), migration
    with watcher.db() as db:
        located = db.execute("SELECT node FROM workloads WHERE name = ?", (name,)).fetchone()
        tried = [r["detail"] for r in db.execute("SELECT detail FROM transitions WHERE migration_id = ?",
                                                 (migration["id"],))]
    assert located and located["node"] == target, (dict(located or {}), tried)
    record = json.loads((watcher.state_dir / "records" / f"{migration['id']}.json").read_text())
    [row] = record["migrations"]
    assert row["workload"] == name and row["target"] == target and row["outcome"] == "running", row
    assert row["failed_targets"] == ["standby1"], row
    status = subprocess.run([CLI, "status", "--config", str(watcher.state_dir / "watch.yml"), "--json"],
                            capture_output=True, text=True, check=True, env=watcher.env)
    assert json.loads(status.stdout)["workloads"].get(target) == {name: True}


def _assert_no_secrets(fleet, watcher):
    """Neither the HMAC secret nor any IMDSv2 token the simulators issued is in a log, the ledger or a run dir."""
    needles = [fleet.secret_file.read_text().strip()]
    for node in fleet.nodes:
        needles += control.state(node.metadata_url).get("tokens", [])
    assert len(needles) > 1, "the AWS node issued no IMDSv2 token: the check would prove nothing"
    places = [watcher.state_dir] + [Path(n.paths["state"]) / "eviction-agent" / "state" for n in fleet.nodes]
    checked = 0
    for place in places:
        # The watcher runs on: its sweep run dirs come and go while this walks (os.walk skips a vanished one).
        for root, _dirs, files in os.walk(place):
            for name in files:
                path = Path(root) / name
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                checked += 1
                for needle in needles:
                    assert needle.encode() not in data, f"secret or token found in {path}"
    assert checked, f"no file under {places}: the check would prove nothing"


# Every state a migrate run goes through ("checkpointed" is only reached by a run that waits for the emergency
# checkpoints before reserving; the migrate playbook reserves while they are written).
CRASH_STATES = ["noticed", "checkpointing", "target_reserved", "transferring", "verified", "resuming"]


@pytest.mark.parametrize("state", CRASH_STATES)
def test_watcher_killed_at_each_step_finishes_once(wfleet, watcher, wmig, state):
    name = f"wkill-{state.replace('_', '-')}"
    wmig.deploy("node1", name)
    watcher.start(crash_at=state)
    fleet_mod.inject(wfleet.dir, "node1", "spot_interruption", in_seconds=120)
    watcher.proc.wait(120)
    assert watcher.proc.returncode == -signal.SIGKILL, watcher.log.read_text()[-3000:]
    killed = watcher.migrations()
    assert len(killed) == 1 and killed[0]["state"] == state, killed
    watcher.start()
    migration = watcher.finished()
    assert migration["state"] == "running", (migration, watcher.log.read_text()[-4000:])
    # Killed before its first claim ("noticed"), the migration is first claimed by the restarted watcher.
    assert migration["attempts"] >= (1 if state == "noticed" else 2)
    _assert_once(wmig, name, migration)
    assert len(watcher.migrations()) == 1
    wait_for(lambda: watcher.received, 10, "the alert")
    assert len(watcher.received) == 1, watcher.received


def test_same_notice_sixty_times_one_migration_one_alert(wfleet, watcher, wmig):
    wmig.deploy("node1", "wdup")
    watcher.start(interval=1, hosts="all")
    fleet_mod.inject(wfleet.dir, "node1", "spot_interruption", in_seconds=120)
    wait_for(watcher.notices, 10, "the first delivery")
    notice = json.loads(watcher.notices()[0]["payload"])
    secret = _signing().load_secret(wfleet.secret_file.read_text())
    supervisor, _agent = fleet_mod.agent_pids(wfleet.node("node1"))
    for round_ in range(50):
        response = watcher.push({"type": "notice", "node": "node1", "notice": notice}, secret)
        assert response.status_code == 202, response.text
        if round_ % 10 == 5:
            # Restart the agent with its state file gone: it hears the notice again and pushes it again.
            state_file = Path(wfleet.node("node1").paths["state"]) / "eviction-agent" / "state" / "state.json"
            agent = fleet_mod.agent_pids(wfleet.node("node1"))[1]
            os.kill(agent[0], signal.SIGKILL)
            state_file.unlink()
            wait_for(lambda: fleet_mod.agent_pids(wfleet.node("node1"))[1] != agent, 10, "the supervisor's restart")
    assert fleet_mod.agent_pids(wfleet.node("node1"))[0] == supervisor
    wait_for(lambda: watcher.notices()[0]["deliveries"] >= 60, 60, "60 deliveries (pushes and sweeps)")
    migration = watcher.finished()
    assert migration["state"] == "running"
    _assert_once(wmig, "wdup", migration)
    time.sleep(2)
    assert len(watcher.migrations()) == 1 and len(watcher.notices()) == 1
    assert len(watcher.received) == 1
    metrics = httpx.get(watcher.url + "/metrics").text
    assert 'spot_notice_deliveries_total{via="sweep"}' in metrics


def test_forged_replayed_stale_and_unsigned_pushes_are_refused(wfleet, watcher):
    watcher.start()
    secret = _signing().load_secret(wfleet.secret_file.read_text())
    notice = {"evicting": True, "provider": "aws", "kind": "spot_interruption", "notice_id": "aws-forged0001",
              "action": "terminate", "deadline": None}
    payload = {"type": "notice", "node": "node1", "notice": notice}
    assert watcher.push(payload).status_code == 401                                    # unsigned
    forged = watcher.push(payload, b"not-the-secret-but-long-enough")
    assert forged.status_code == 401 and forged.json()["reason"] == "forged"
    stale = watcher.push(payload, secret, now=time.time() - 301)
    assert stale.status_code == 401 and stale.json()["reason"] == "stale"
    body = json.dumps({"type": "heartbeat", "node": "node2"}).encode()
    headers = dict(_signing().sign(secret, body), **{"Content-Type": "application/json"})
    assert httpx.post(watcher.url + "/v1/events", content=body, headers=headers).status_code == 202
    replay = httpx.post(watcher.url + "/v1/events", content=body, headers=headers)
    assert replay.status_code == 401 and replay.json()["reason"] == "replayed"
    altered = httpx.post(watcher.url + "/v1/events", content=json.dumps(payload).encode(), headers=headers)
    assert altered.status_code == 401 and altered.json()["reason"] == "forged"
    unknown = watcher.push({"type": "notice", "node": "nosuchnode", "notice": notice}, secret)
    assert unknown.status_code == 404
    time.sleep(1)
    assert watcher.notices() == [] and watcher.migrations() == []
    metrics = httpx.get(watcher.url + "/metrics").text
    for reason in ("unsigned", "forged", "stale", "replayed"):
        assert f'spot_pushes_rejected_total{{reason="{reason}"}}' in metrics, reason


def test_watcher_unreachable_for_20_s_checkpoint_happens_at_once(wfleet, watcher, wmig):
    # Checkpoints at start, on a signal and every ~30 s (progress after the resume must pass the resumed step), so a
    # fresh one within seconds proves the agent's signal.
    wmig.deploy("node1", "wlate", extra=["--every", "3000", "--initial-checkpoint"])
    checkpoints = Path(wfleet.node("node1").paths["checkpoints"]) / "wlate"
    injected = time.time()
    fleet_mod.inject(wfleet.dir, "node1", "spot_interruption", in_seconds=120)
    # No watcher: the agent still signals the workload, which writes a checkpoint within about a second.
    entry = wait_for(lambda: next((e for e in agent_state(wfleet, "node1")["notices"].values()
                                   if e["detected_epoch"] > injected), None), 5, "the agent")
    assert entry["signalled"][0]["name"] == "wlate" and entry["acked_at"] is None
    fresh = wait_for(lambda: [p for p in checkpoints.glob("*.safetensors") if p.stat().st_mtime > injected], 5,
                     "a checkpoint written on the agent's signal")
    assert fresh
    time.sleep(max(0.0, injected + 20 - time.time()))
    assert agent_state(wfleet, "node1")["pending"], "the push should still be waiting for the watcher"
    watcher.start()
    migration = watcher.finished()
    assert migration["state"] == "running"
    _assert_once(wmig, "wlate", migration)
    assert agent_state(wfleet, "node1")["pending"] == []


def test_blind_metadata_service_is_reported_never_migrated(wfleet, watcher, wmig):
    # node3 is the Azure node: it polls every second (the GCP node waits in a hanging GET of up to 10 s).
    wmig.deploy("node3", "wblind")
    watcher.start()
    wait_for(lambda: watcher.node("node3").get("last_heartbeat_at"), 15, "node3's first heartbeat")
    control.fault(wfleet.node("node3").metadata_url, "error", status=500)
    blind = wait_for(lambda: watcher.node("node3").get("blind") and watcher.node("node3"), 15, "node3 reported blind")
    assert "500" in (blind["error"] or "")
    wait_for(lambda: any(a.get("kind") == "blind" for a in watcher.received), 10, "the blind alert")
    time.sleep(max(0.0, 10 - (time.time() - blind["blind_since"])))
    control.clear_faults(wfleet.node("node3").metadata_url)
    wait_for(lambda: not watcher.node("node3").get("blind"), 15, "node3 readable again")
    assert watcher.migrations() == [] and watcher.notices() == []
    assert wmig.where("wblind") == {"node3": True}
    assert [a["kind"] for a in watcher.received if a.get("kind")] == ["blind"]


def test_silent_agent_the_sweep_finds_the_notice(wfleet, watcher, wmig):
    wmig.deploy("node3", "wsilent")
    pids = fleet_mod.agent_pids(wfleet.node("node3"))
    for pid, _ticks in pids:
        os.kill(pid, signal.SIGSTOP)  # the agent hangs: no heartbeats, no pushes
    try:
        watcher.start(interval=2, secret_in_env=True)
        fleet_mod.inject(wfleet.dir, "node3", "terminate")
        migration = watcher.finished()
        assert migration["state"] == "running"
        _assert_once(wmig, "wsilent", migration)
        notice = watcher.notices()[0]
        assert notice["first_via"] == "sweep" and notice["node"] == "node3"
        assert watcher.node("node3")["last_heartbeat_at"] is None and watcher.node("node3")["last_probe_at"]
        # The secret came from the environment: it is not in the environments ansible-runner records.
        _assert_no_secrets(wfleet, watcher)
    finally:
        for pid, _ticks in pids:
            os.kill(pid, signal.SIGCONT)


def test_two_evictions_at_once_share_the_reservations(wfleet, watcher, wmig):
    wmig.deploy("node1", "wtwo-a")
    wmig.deploy("node3", "wtwo-b")
    watcher.start()
    fleet_mod.inject(wfleet.dir, "node1", "spot_interruption", in_seconds=120)
    fleet_mod.inject(wfleet.dir, "node3", "terminate")
    wait_for(lambda: len(watcher.migrations()) == 2 and all(m["state"] in ("running", "failed")
                                                            for m in watcher.migrations()), 240,
             "both migrations to finish", interval=0.5)
    by_name = {m["workloads"][0]: m for m in watcher.migrations()}
    assert {m["state"] for m in by_name.values()} == {"running"}, by_name
    targets = {name: _assert_once(wmig, name, m) for name, m in by_name.items()}
    gpus = []
    for name, target in targets.items():
        spec = json.loads((Path(wfleet.node(target).paths["workloads"]) / name / "spec.json").read_text())
        gpus.append((target, tuple(spec["gpus"])))
    assert len(set(gpus)) == 2, gpus  # never the same GPUs twice
    assert len(watcher.received) == 2


@pytest.fixture
def wgang(wfleet, ansible_env, tmp_path):
    gang = Gang(wfleet, play_runner(wfleet, ansible_env, tmp_path), ansible_env, tmp_path, "wddp")
    try:
        yield gang
    finally:
        gang.cleanup()


def _gang_record(watcher, migration: dict) -> dict:
    return json.loads((watcher.state_dir / "records" / f"{migration['id']}.wddp.json").read_text())


def test_a_notice_on_a_gang_member_moves_the_member_and_restarts_the_gang(wfleet, watcher, wgang):
    wgang.deploy(["node1", "node2"])
    watcher.start()
    fleet_mod.inject(wfleet.dir, "node2", "spot_interruption", in_seconds=120)
    migration = watcher.finished()
    assert migration["state"] == "running", (migration, watcher.log.read_text()[-4000:])
    record = _gang_record(watcher, migration)
    assert [(m["source"], m["target"]) for m in record["migrations"]] == [("node1", "node1"), ("node2", "standby1")]
    wgang.check_resumed(record, ["node1", "standby1"])
    assert "gang wddp runs again on node1, standby1" in watcher.log.read_text()


@pytest.mark.parametrize("state", ["target_reserved", "transferring", "resuming"])
def test_watcher_killed_mid_gang_migration_finishes_once(wfleet, watcher, wgang, state):
    # The evicted member on the AWS node: a GCP node's preemption notice has no id of its own, and the one above was
    # already told (the agent pushes a notice once).
    wgang.deploy(["node2", "node1"])
    watcher.start(crash_at=state)
    fleet_mod.inject(wfleet.dir, "node1", "spot_interruption", in_seconds=120)
    watcher.proc.wait(120)
    assert watcher.proc.returncode == -signal.SIGKILL, watcher.log.read_text()[-3000:]
    assert [m["state"] for m in watcher.migrations()] == [state]
    watcher.start()
    migration = watcher.finished()
    assert migration["state"] == "running", (migration, watcher.log.read_text()[-4000:])
    assert migration["attempts"] >= 2 and len(watcher.migrations()) == 1
    record = _gang_record(watcher, migration)
    assert [m["target"] for m in record["migrations"]] == ["node2", "standby1"]
    # Exactly one gang: every member once, where the record says, resumed from one step with the new rendezvous (a
    # resumed run that finds the gang restarted by the killed watcher's run says so, and starts what was missing).
    wgang.check_resumed(record, ["node2", "standby1"])
    wait_for(lambda: watcher.received, 10, "the alert")
    assert len(watcher.received) == 1, watcher.received
