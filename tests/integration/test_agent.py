"""The eviction agent against real metadata simulators and a real signed-push receiver: notices heard at once,
workloads signalled before anything else, pushes retried until acknowledged, blind never mistaken for quiet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _signing, _workload
from spot_migration import collections_path
from spot_migration.sim import control

SECRET = "a" * 16 + "0123456789abcdef"
TRAINER = Path(__file__).resolve().parents[2] / "src" / "spot_migration" / "trainer.py"


class Receiver(ThreadingHTTPServer):
    """Verifies every push like the watcher does; ``up`` False answers 503."""

    def __init__(self):
        self.events, self.refused, self.nonces, self.up = [], [], set(), True

        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def seen(self, nonce, sent_at):
        if nonce in self.nonces:
            return True
        self.nonces.add(nonce)
        return False

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def of_type(self, kind):
        return [e for e in self.events if e["type"] == kind]


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.server.up:
            self.send_response(503)
            self.end_headers()
            return
        try:
            _signing.verify(_signing.load_secret(SECRET), dict(self.headers.items()), body, self.server.seen)
        except _signing.SignatureError as exc:
            self.server.refused.append(exc.reason)
            self.send_response(401)
            self.end_headers()
            return
        self.server.events.append(json.loads(body))
        self.send_response(202)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def trainer(tmp_path):
    """A real trainer under the process driver, checkpointing only at start and when signalled."""
    driver = _workload.ProcessDriver(_agent._run, str(tmp_path / "workloads"))
    ckpt = tmp_path / "ckpt"
    spec = _workload.build_spec({"name": "job", "runtime": "process", "command": [sys.executable, str(TRAINER)],
                                 "args": ["--checkpoint-dir", str(ckpt), "--step-time", "0.01", "--every", "1000000",
                                          "--initial-checkpoint"], "checkpoint_dir": str(ckpt)})
    _workload.ensure_started(driver, spec, False)
    deadline = time.time() + 20
    while not list(ckpt.glob("step-*.safetensors")) and time.time() < deadline:
        time.sleep(0.05)
    yield ckpt
    driver.stop("job", 5)


def make_config(tmp_path, sim, receiver, **more):
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    state = tmp_path / "agent-state"
    state.mkdir(exist_ok=True)
    config = dict(_agent.DEFAULTS, node="node1", provider=sim.state.cloud, metadata_url=sim.url,
                  watcher_url=receiver.url, secret_file=str(secret), state_dir=str(state),
                  workload_root=str(tmp_path / "workloads"), runtimes=["process"], probe_timeout=1.0)
    config.update(more)
    return config


def test_notice_signals_the_workload_then_pushes_signed(metadata_sim, receiver, trainer, tmp_path):
    sim = metadata_sim("aws")
    agent = _agent.Agent(make_config(tmp_path, sim, receiver))
    assert agent.check_once()["kind"] == "none" and agent.state["pending"] == []
    before = {p.name for p in trainer.glob("step-*.safetensors")}
    control.inject(sim.url, "spot_interruption", in_seconds=120)
    notice = agent.check_once()
    assert notice["evicting"] and agent.state["pending"] == [notice["notice_id"]]
    entry = agent.state["notices"][notice["notice_id"]]
    assert entry["signalled"][0]["name"] == "job" and entry["signalled"][0]["how"] == "SIGUSR1"
    deadline = time.time() + 5
    while {p.name for p in trainer.glob("step-*.safetensors")} == before and time.time() < deadline:
        time.sleep(0.05)
    assert {p.name for p in trainer.glob("step-*.safetensors")} != before, "no checkpoint after the agent's signal"
    assert agent.push_once()
    pushed = receiver.of_type("notice")
    assert len(pushed) == 1 and pushed[0]["notice"]["notice_id"] == notice["notice_id"]
    assert receiver.of_type("heartbeat")[0]["blind"] is False
    saved = json.loads((tmp_path / "agent-state" / "state.json").read_text())
    assert saved["pending"] == [] and saved["notices"][notice["notice_id"]]["acked_at"]
    # Restarted, it remembers: the same notice is neither signalled nor pushed again.
    again = _agent.Agent(make_config(tmp_path, sim, receiver))
    again.check_once()
    again.heartbeat_due = float("inf")
    assert again.push_once() and len(receiver.of_type("notice")) == 1


def test_rebalance_is_pushed_but_nothing_is_signalled(metadata_sim, receiver, trainer, tmp_path):
    sim = metadata_sim("aws")
    agent = _agent.Agent(make_config(tmp_path, sim, receiver))
    control.inject(sim.url, "rebalance")
    notice = agent.check_once()
    assert notice["kind"] == "rebalance" and not notice["evicting"]
    assert agent.state["notices"][notice["notice_id"]]["signalled"] == []
    assert agent.push_once() and receiver.of_type("notice")[0]["notice"]["evicting"] is False


def test_blind_is_reported_never_a_notice_and_never_a_crash(metadata_sim, receiver, tmp_path):
    sim = metadata_sim("azure")
    agent = _agent.Agent(make_config(tmp_path, sim, receiver))
    control.fault(sim.url, "error", status=500)
    assert agent.check_once() is None
    assert agent.push_once()
    beat = receiver.of_type("heartbeat")[-1]
    assert beat["blind"] is True and "500" in beat["error"] and beat["blind_since"]
    assert receiver.of_type("notice") == [] and agent.state["notices"] == {}
    control.clear_faults(sim.url)
    assert agent.check_once()["kind"] == "none"
    assert agent.push_once() and receiver.of_type("heartbeat")[-1]["blind"] is False


def test_pushes_wait_for_the_watcher(metadata_sim, receiver, tmp_path):
    sim = metadata_sim("aws")
    agent = _agent.Agent(make_config(tmp_path, sim, receiver))
    receiver.up = False
    control.inject(sim.url, "spot_interruption")
    agent.check_once()
    assert agent.push_once() is False and len(agent.state["pending"]) == 1
    receiver.up = True
    assert agent.push_once() is True and agent.state["pending"] == []
    assert len(receiver.of_type("notice")) == 1 and receiver.refused == []


def test_wrong_secret_is_refused_and_retried(metadata_sim, receiver, tmp_path):
    sim = metadata_sim("aws")
    config = make_config(tmp_path, sim, receiver)
    Path(config["secret_file"]).write_text("b" * 32)
    agent = _agent.Agent(config)
    control.inject(sim.url, "spot_interruption")
    agent.check_once()
    assert agent.push_once() is False and receiver.refused == ["forged"] and agent.state["pending"]


@pytest.mark.parametrize("cloud, kind", [("gcp", "preempt"), ("aws", "spot_interruption"), ("azure", "terminate")])
def test_running_agent_hears_a_notice_within_about_a_second(metadata_sim, receiver, tmp_path, cloud, kind):
    sim = metadata_sim(cloud)
    agent = _agent.Agent(make_config(tmp_path, sim, receiver), log=lambda msg: None)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 10
        while not receiver.of_type("heartbeat") and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # GCP: the agent is now inside a hanging GET
        injected = time.time()
        control.inject(sim.url, kind)
        while not receiver.of_type("notice") and time.time() < injected + 10:
            time.sleep(0.02)
        assert receiver.of_type("notice"), "no notice pushed within 10 s"
        entry = next(iter(agent.state["notices"].values()))
        assert entry["detected_epoch"] - injected < 1.6, entry["detected_epoch"] - injected
    finally:
        agent.stop()
        thread.join(15)
    assert not thread.is_alive()


def test_background_process_start_is_idempotent_and_stop_leaves_nothing(metadata_sim, receiver, tmp_path):
    sim = metadata_sim("aws")
    config = make_config(tmp_path, sim, receiver)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    launcher = tmp_path / "spot-eviction-agent"
    collections = collections_path()
    launcher.write_text("import sys\nsys.path.insert(0, %r)\n"
                        "from ansible_collections.spot.migration.plugins.module_utils._agent import main\n"
                        "sys.exit(main())\n" % str(collections))

    def call(command):
        out = subprocess.run([sys.executable, str(launcher), "--config", str(cfg), command], capture_output=True,
                             text=True, timeout=30, check=False)
        assert out.returncode == 0, f"{command}: rc {out.returncode}: {out.stderr}"
        return json.loads(out.stdout)

    started = call("start")
    try:
        assert started["changed"] is True
        assert call("start") == {"changed": False, "supervisor": started["supervisor"]}
        deadline = time.time() + 10
        while not receiver.of_type("heartbeat") and time.time() < deadline:
            time.sleep(0.05)
        assert receiver.of_type("heartbeat"), (tmp_path / "agent-state" / "agent.log").read_text()
        info = json.loads((tmp_path / "agent-state" / "agent.pid").read_text())
        os.kill(info["agent"], 9)  # the supervisor restarts a dead agent
        deadline = time.time() + 10
        while json.loads((tmp_path / "agent-state" / "agent.pid").read_text())["agent"] == info["agent"]:
            assert time.time() < deadline, "the supervisor did not restart the agent"
            time.sleep(0.05)
        cfg.write_text(json.dumps(dict(config, poll_interval=0.5)))
        assert call("start")["restarted"] is True
    finally:
        stopped = call("stop")
    assert stopped == {"changed": True} and call("status")["running"] is False
    info = json.loads((tmp_path / "agent-state" / "agent.pid").read_text())
    for pid in (info["supervisor"], info["agent"]):
        assert _agent._start_ticks(pid) is None


def _processes_with(needle: str) -> list[int]:
    """Pids whose command line names ``needle`` (this test's own config file: nothing else has it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            if needle.encode() in argv and int(entry) != os.getpid():
                found.append(int(entry))
    return found


@pytest.mark.parametrize("after", [0.0, 0.5, 0.95, 1.0, 1.05, 1.15])
def test_stop_while_the_supervisor_restarts_the_agent_leaves_nothing(metadata_sim, receiver, tmp_path, after):
    """[K] 8: ``stop`` lands at each moment of a restart (the supervisor waits 1 s, then starts a new agent and
    writes its pid): when it returns, no process it started lives, whichever agent the pid file named."""
    sim = metadata_sim("aws")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(make_config(tmp_path, sim, receiver)))
    launcher = tmp_path / "spot-eviction-agent"
    launcher.write_text("import sys\nsys.path.insert(0, %r)\n"
                        "from ansible_collections.spot.migration.plugins.module_utils._agent import main\n"
                        "sys.exit(main())\n" % str(collections_path()))

    def call(command):
        out = subprocess.run([sys.executable, str(launcher), "--config", str(cfg), command], capture_output=True,
                             text=True, timeout=60, check=True)
        return json.loads(out.stdout)

    pidfile = tmp_path / "agent-state" / "agent.pid"
    started = call("start")
    try:
        deadline = time.time() + 10
        while "agent" not in json.loads(pidfile.read_text()):
            assert time.time() < deadline, "the supervisor never named its agent"
            time.sleep(0.05)
        assert len(_processes_with(str(cfg))) == 2, _processes_with(str(cfg))  # supervisor and agent
        os.kill(json.loads(pidfile.read_text())["agent"], signal.SIGKILL)  # the supervisor restarts it in 1 s
        time.sleep(after)
    finally:
        stopped = call("stop")
        left = _processes_with(str(cfg))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert stopped == {"changed": True}, stopped
    assert left == [], (left, started, (tmp_path / "agent-state" / "agent.log").read_text()[-2000:])
    assert call("status")["running"] is False


def test_one_state_directory_one_agent(metadata_sim, receiver, tmp_path):
    """Two nodes of one machine left on the same state directory: the second agent is refused, naming the first."""
    sim = metadata_sim("aws")
    config = make_config(tmp_path, sim, receiver)
    cfg, other = tmp_path / "config.json", tmp_path / "other.json"
    cfg.write_text(json.dumps(config))
    other.write_text(json.dumps(dict(config, node="node2")))
    launcher = tmp_path / "spot-eviction-agent"
    launcher.write_text("import sys\nsys.path.insert(0, %r)\n"
                        "from ansible_collections.spot.migration.plugins.module_utils._agent import main\n"
                        "sys.exit(main())\n" % str(collections_path()))

    def call(path, command):
        return subprocess.run([sys.executable, str(launcher), "--config", str(path), command], capture_output=True,
                              text=True, timeout=30, check=False)

    assert call(cfg, "start").returncode == 0
    try:
        refused = call(other, "start")
        assert refused.returncode == 2 and "used by the agent of node node1" in refused.stderr, refused.stderr
        # A second "run" on it (no supervisor involved) is refused by the lock the running agent holds.
        deadline = time.time() + 10
        while not receiver.of_type("heartbeat") and time.time() < deadline:
            time.sleep(0.05)
        held = call(other, "run")
        assert held.returncode == 2 and "is held by another agent" in held.stderr, held.stderr
    finally:
        assert json.loads(call(cfg, "stop").stdout) == {"changed": True}


def test_bad_config_is_named(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"node": "n", "watcher_url": "http://127.0.0.1:9", "pol_interval": 1}))
    with pytest.raises(_agent.AgentError, match="unknown settings: pol_interval"):
        _agent.load_config(str(cfg))
    cfg.write_text(json.dumps({"node": "n"}))
    with pytest.raises(_agent.AgentError, match="watcher_url is required"):
        _agent.load_config(str(cfg))


def test_the_agents_checkpoint_is_used_without_asking_again(trainer, tmp_path):
    driver = _workload.ProcessDriver(_agent._run, str(tmp_path / "workloads"))
    asked = time.time()
    _workload.request_checkpoint(driver, "job", driver.status("job")["spec"])
    deadline = time.time() + 5
    while not [p for p in trainer.glob("step-*.safetensors") if p.stat().st_mtime > asked] and time.time() < deadline:
        time.sleep(0.05)
    files = sorted(p.name for p in trainer.glob("step-*.safetensors"))
    taken = _workload.ensure_checkpointed(driver, "job", False, deadline=5, signalled_at=asked)
    assert taken["changed"] is False and taken["checkpoint"]["signal"] == "earlier"
    assert taken["checkpoint"]["mtime"] >= asked
    assert sorted(p.name for p in trainer.glob("step-*.safetensors")) == files
    # Asked before the newest checkpoint? Nothing newer than "now": it asks again and waits for a new one.
    fresh = _workload.ensure_checkpointed(driver, "job", False, deadline=5, signalled_at=time.time())
    assert fresh["changed"] is True and fresh["checkpoint"]["signal"] == "SIGUSR1"
    assert fresh["checkpoint"]["checkpoint"] != taken["checkpoint"]["checkpoint"]


def test_gcp_second_preemption_after_a_restart_is_a_new_notice(metadata_sim, receiver, tmp_path, monkeypatch):
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    monkeypatch.setenv("SPOT_BOOT_ID_FILE", str(boot))
    sim = metadata_sim("gcp")
    agent = _agent.Agent(make_config(tmp_path, sim, receiver))
    control.inject(sim.url, "preempt")
    first = agent.check_once()
    control.inject(sim.url, "clear")
    assert agent.check_once()["kind"] == "none"
    control.inject(sim.url, "preempt")
    assert agent.check_once()["notice_id"] == first["notice_id"] and len(agent.state["notices"]) == 1
    control.inject(sim.url, "clear")
    boot.write_text("boot-2\n")  # the VM was stopped and started again
    control.inject(sim.url, "preempt")
    second = agent.check_once()
    assert second["notice_id"] != first["notice_id"] and len(agent.state["notices"]) == 2


def test_the_watchers_fence_list_stops_a_stale_copy_at_once(tmp_path):
    """A node back from being lost: the acknowledgement of its first heartbeat names the copies resumed elsewhere;
    the agent stops them and leaves the marker that keeps them from starting again, before anything else."""
    from ansible_collections.spot.migration.plugins.module_utils._metadata import Response

    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    root = tmp_path / "workloads"
    driver = _workload.create_driver("process", _agent._run, None, str(root))
    spec = {"name": "stale", "runtime": "process", "command": [sys.executable, "-c", "import time; time.sleep(60)"],
            "gpus": [], "checkpoint_dir": str(tmp_path / "ck")}
    _workload.ensure_started(driver, dict(_workload.build_spec(dict(spec, args=None, resume_from=None,
                                                                    resume_arg=["--resume", "{checkpoint}"], env=None,
                                                                    volumes=None, checkpoint_signal="SIGUSR1",
                                                                    checkpoint_command=None, workdir=None, image=None))),
                             check_mode=False)
    assert driver.status("stale")["running"]
    answer = {"accepted": True, "fence": [{"workload": "stale", "fence_id": "m-42"}]}

    def reply(key, nonce=None):
        def fetch(method, url, headers, timeout, body=None):
            data = json.dumps(dict(answer, in_reply_to=nonce or headers[_signing.NONCE_HEADER])).encode()
            return Response(202, _signing.sign(_signing.load_secret(key), data) if key else {}, data)
        return fetch

    def agent_with(fetch):
        return _agent.Agent(dict(_agent.DEFAULTS, node="node1", watcher_url="http://127.0.0.1:9",
                                 secret_file=str(secret), state_dir=str(tmp_path / "state"), workload_root=str(root),
                                 runtimes=["process"]), fetch=fetch, log=lambda msg: None)
    try:
        # Not signed by the watcher, signed with another key, or a reply to some other push: not obeyed.
        for fetch in (reply(None), reply("t" * 32), reply("s" * 32, nonce="f" * 32)):
            agent = agent_with(fetch)
            assert agent._post(agent.heartbeat_payload()) == (True, None)
            assert driver.status("stale")["running"]
        agent = agent_with(reply("s" * 32))
        assert agent._post(agent.heartbeat_payload()) == (True, None)
        assert driver.status("stale") is None  # stopped and removed
        assert _workload.read_fence(str(root), "stale")["fence_id"] == "m-42"
        with pytest.raises(_workload.WorkloadError, match="fenced on this node"):
            _workload.check_fence(str(root), "stale", clear_fence=False, check_mode=False)
    finally:
        _workload.ensure_absent(driver, "stale", False, 5)


def test_replication_pauses_while_a_notice_stands_and_resumes_when_it_is_gone(metadata_sim, receiver, tmp_path):
    """The migration moves the emergency checkpoint; the agent's own copying must not compete with it. A notice that
    goes away (cancelled, or the node survived it) lets replication go on."""
    sim = metadata_sim("aws")
    agent = _agent.Agent(make_config(tmp_path, sim, receiver))
    assert agent.check_once()["kind"] == "none" and agent.follower.paused is None
    control.inject(sim.url, "rebalance")  # not evicting: replication goes on
    agent.check_once()
    assert agent.follower.paused is None
    control.inject(sim.url, "spot_interruption")
    notice = agent.check_once()
    assert notice["evicting"] and notice["notice_id"] in agent.follower.paused
    assert agent.heartbeat_payload()["replication_paused"] == agent.follower.paused
    agent.check_once()  # the same notice again: still paused
    assert agent.follower.paused
    control.inject(sim.url, "clear")
    assert agent.check_once()["kind"] == "none" and agent.follower.paused is None
