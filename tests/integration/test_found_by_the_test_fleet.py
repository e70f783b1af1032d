"""What an independent test fleet found ([K] 5-7): every HTTP call on a node bounded in wall-clock time, the agent's
loop floored when GCP's hanging GET does not hang, and the watcher's push endpoint answering hostile and flooding
clients (real metadata simulators, a real PushServer)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _http, _metadata, _signing
from spot_migration.sim import control
from spot_migration.watch.server import MAX_DEPTH, PushServer, nesting

SECRET = "k" * 16 + "0123456789abcdef"


@pytest.mark.parametrize("fetch", [_http.urllib_fetch, _http.ansible_fetch], ids=["urllib", "ansible"])
def test_a_dripping_body_is_cut_off_at_the_timeout(metadata_sim, fetch):
    sim = metadata_sim("gcp")
    control.fault(sim.url, "drip", seconds=0.5)  # 52 bytes at 0.5 s each: 26 s without a wall-clock bound
    start = time.monotonic()
    with pytest.raises(_metadata.TransportError, match="within 2.0 s"):
        fetch("GET", sim.url + "/computeMetadata/v1/instance/id", {"Metadata-Flavor": "Google"}, 2.0)
    assert time.monotonic() - start < 3.0
    # The abandoned exchange is over too (its socket shut down): nothing keeps dripping into this process.
    deadline = time.monotonic() + 2
    while any(t.name == "http" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "http" for t in threading.enumerate())
    control.clear_faults(sim.url)
    ok = fetch("GET", sim.url + "/computeMetadata/v1/instance/id", {"Metadata-Flavor": "Google"}, 2.0)
    assert ok.status == 200


def test_gcp_agent_loop_is_floored_when_the_hanging_get_does_not_hang(metadata_sim, tmp_path):
    sim = metadata_sim("gcp")
    control.fault(sim.url, "nohang")
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    (tmp_path / "state").mkdir()
    config = dict(_agent.DEFAULTS, node="node1", provider="gcp", metadata_url=sim.url,
                  watcher_url="http://127.0.0.1:9", secret_file=str(secret), state_dir=str(tmp_path / "state"),
                  signal_workloads=False, heartbeat_interval=60)
    agent = _agent.Agent(config, log=lambda msg: None)
    thread = threading.Thread(target=agent.run, daemon=True)
    before = sum(control.state(sim.url)["requests"].values())
    thread.start()
    time.sleep(2.0)
    agent.stop()
    thread.join(10)
    made = sum(control.state(sim.url)["requests"].values()) - before
    # 0.2 s a round at least, a few requests a round: tens in 2 s (without the floor: hundreds a second).
    assert 4 <= made <= 80, made


def _agent_on(sim, tmp_path, provider, **config):
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    (tmp_path / "state").mkdir(exist_ok=True)
    said: list[tuple[float, str]] = []
    config = dict(_agent.DEFAULTS, node="node1", provider=provider, metadata_url=sim.url,
                  watcher_url="http://127.0.0.1:9", secret_file=str(secret), state_dir=str(tmp_path / "state"),
                  signal_workloads=False, heartbeat_interval=60, **config)
    return _agent.Agent(config, log=lambda msg: said.append((time.monotonic(), msg))), said


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
@pytest.mark.parametrize("mode", ["error", "drop", "hang"])
def test_a_healed_metadata_service_is_noticed_within_one_poll(metadata_sim, tmp_path, provider, mode):
    """[K] 5: once the service answers again the agent says so at its next probe: within one poll interval of the
    heal (plus, for a request that hung, what is left of that request's own timeout), never tens of seconds."""
    sim = metadata_sim(provider)
    poll, timeout = 1.0, 2.0
    agent, said = _agent_on(sim, tmp_path, provider, poll_interval=poll, probe_timeout=timeout, gcp_max_hang=5)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while agent.probe is None and time.monotonic() < deadline:
            time.sleep(0.05)
        control.fault(sim.url, mode, **({"seconds": 30} if mode == "hang" else {}))  # until cleared
        deadline = time.monotonic() + 15
        while agent.blind_since is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.blind_since is not None, said
        time.sleep(1.0)  # blind for a while, as after a real outage
        control.clear_faults(sim.url)
        healed = time.monotonic()
        deadline = healed + 20
        while agent.blind_since is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        noticed = time.monotonic() - healed
    finally:
        agent.stop()
        thread.join(15)
    assert not thread.is_alive()
    assert any("answers again" in msg for _when, msg in said), said
    bound = poll + (timeout if mode == "hang" else 0.0) + 1.0  # 1 s for a busy machine
    assert noticed <= bound, (noticed, said)


class Refused(PermissionError):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


@pytest.fixture
def server():
    signing_secret = _signing.load_secret(SECRET)
    seen: set[str] = set()
    rejected: list[str] = []

    def verify(headers, body):  # as the watcher's intake does: a refusal is a PermissionError with its reason
        try:
            _signing.verify(signing_secret, headers, body, lambda nonce, ts: nonce in seen or seen.add(nonce))
        except _signing.SignatureError as exc:
            raise Refused(exc.reason) from None

    srv = PushServer(("127.0.0.1", 0), verify, lambda event: {"accepted": True}, lambda: (True, {}),
                     lambda: (b"", "text/plain"), lambda reason, client: rejected.append(reason))
    srv.thread.start()
    srv.rejected, srv.secret = rejected, signing_secret
    yield srv
    srv.shutdown()
    srv.server_close()


def post(srv, body: bytes, **sign):
    headers = dict(_signing.sign(srv.secret, body, **sign), **{"Content-Type": "application/json"})
    return httpx.post(srv.url + "/v1/events", content=body, headers=headers, timeout=10)


def test_nesting_counts_without_recursion():
    assert nesting(b'{"a": [1, {"b": "[[[[{{{"}]}') == 3
    assert nesting(b"[" * 100000) == MAX_DEPTH + 1


def test_deeply_nested_signed_body_is_answered_400(server):
    response = post(server, b'{"type": "notice", "node": "n", "x": ' + b"[" * 50000 + b"]" * 50000 + b"}")
    assert response.status_code == 400 and "nested deeper" in response.json()["error"]
    assert server.rejected == ["malformed"]


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf"])
def test_a_non_finite_timestamp_is_malformed_not_replayed(server, stamp):
    body = json.dumps({"type": "heartbeat", "node": "n"}).encode()
    headers = dict(_signing.sign(server.secret, body), **{"Content-Type": "application/json"})
    headers[_signing.TIMESTAMP_HEADER] = stamp
    response = httpx.post(server.url + "/v1/events", content=body, headers=headers, timeout=10)
    assert response.status_code == 401 and response.json()["reason"] == "malformed", response.text


def test_a_flood_of_forged_pushes_is_answered_every_time(server):
    body = json.dumps({"type": "heartbeat", "node": "n"}).encode()
    forged = dict(_signing.sign(b"not-the-secret-but-long-enough", body), **{"Content-Type": "application/json"})
    codes: list[int | str] = []

    def one():
        try:
            codes.append(httpx.post(server.url + "/v1/events", content=body, headers=forged, timeout=20).status_code)
        except httpx.HTTPError as exc:
            codes.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _push in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes.count(401) == 300, sorted(set(map(str, codes)))


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(server, capfd):
    with socket.create_connection(server.server_address[:2]) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"type\":")
    time.sleep(0.3)
    assert post(server, json.dumps({"type": "heartbeat", "node": "n"}).encode()).status_code == 202
    assert "Traceback" not in capfd.readouterr().err


def test_modules_fetch_plain_http_without_ansibles_ssl_context(monkeypatch):
    """Metadata services speak plain HTTP: modules take the standard library for http:// (ansible's open_url loads
    the CA bundle on every request) and keep ansible's certificate handling for https://."""
    calls = []
    monkeypatch.setattr(_http, "urllib_fetch", lambda *a, **k: calls.append(("urllib", a[1])) or "u")
    monkeypatch.setattr(_http, "ansible_fetch", lambda *a, **k: calls.append(("ansible", a[1])) or "a")
    assert _http.module_fetch("GET", "http://127.0.0.1:9/latest/meta-data/", {}, 1.0) == "u"
    assert _http.module_fetch("PUT", "HTTPS://metadata.example/token", {}, 1.0, b"") == "a"
    assert calls == [("urllib", "http://127.0.0.1:9/latest/meta-data/"), ("ansible", "HTTPS://metadata.example/token")]
