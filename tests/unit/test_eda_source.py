"""The EDA event source's ``main(queue, args)`` driven directly: signed pushes become events, everything else is
refused with the watcher's reasons and never reaches the queue; blind/recovered only on a change; bad arguments
are named."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from ansible_collections.spot.migration.extensions.eda.plugins.event_source import eviction_notices as source
from ansible_collections.spot.migration.plugins.module_utils import _signing as signing

SECRET = "an-eda-secret-that-is-long-enough-0123456789"
NOTICE = {"evicting": True, "provider": "gcp", "kind": "preempt", "action": "stop", "deadline": None,
          "seconds_left": None, "notice_id": "gcp-123-boot1", "instance_id": "123"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def signed(payload: dict, secret: str = SECRET, **kwargs) -> tuple[bytes, dict]:
    body = json.dumps(payload).encode()
    headers = dict(signing.sign(signing.load_secret(secret), body, **kwargs), **{"Content-Type": "application/json"})
    return body, headers


async def serve(args: dict, steps):
    """Run main() on a free port, call ``steps(client, url, queue)``, then cancel it the way ansible-rulebook does."""
    queue: asyncio.Queue = asyncio.Queue()
    port = free_port()
    task = asyncio.create_task(source.main(queue, {"port": port, **args}))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=5) as client:
        for attempt in range(100):
            try:
                if (await client.get(url + "/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.02)
        try:
            return await steps(client, url, queue)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def drain(queue: asyncio.Queue) -> list[dict]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_signed_notice_becomes_one_event_each_delivery_counted(monkeypatch):
    monkeypatch.setenv("SPOT_MIGRATION_SECRET", SECRET)
    payload = {"type": "notice", "node": "node2", "notice": NOTICE, "detected_at": "2026-11-30T09:00:00Z",
               "signalled_at": "2026-11-30T09:00:00Z", "signalled_epoch": 1764493200.0,
               "signalled": [{"name": "train", "how": "signal"}]}

    async def steps(client, url, queue):
        first = await client.post(url + "/v1/events", content=signed(payload)[0], headers=signed(payload)[1])
        body, headers = signed(payload)
        again = await client.post(url + "/v1/events", content=body, headers=headers)
        return first, again, drain(queue)

    first, again, events = asyncio.run(serve({}, steps))
    assert first.status_code == 202 and again.status_code == 202
    assert [e["delivery"] for e in events] == [1, 2]
    event = events[0]
    assert event["type"] == "notice" and event["node"] == "node2" and event["evicting"] is True
    assert event["notice"] == NOTICE and event["notice_id"] == "gcp-123-boot1" and event["kind"] == "preempt"
    assert event["signalled_epoch"] == 1764493200.0 and event["signalled"][0]["name"] == "train"


def test_forged_stale_replayed_unsigned_and_malformed_never_reach_the_queue(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    payload = {"type": "notice", "node": "node1", "notice": NOTICE}

    async def steps(client, url, queue):
        out = {}
        out["unsigned"] = await client.post(url + "/v1/events", json=payload)
        body, headers = signed(payload, secret="not-the-secret-but-long-enough-000")
        out["forged"] = await client.post(url + "/v1/events", content=body, headers=headers)
        body, headers = signed(payload, now=time.time() - 301)
        out["stale"] = await client.post(url + "/v1/events", content=body, headers=headers)
        body, headers = signed(payload)
        assert (await client.post(url + "/v1/events", content=body, headers=headers)).status_code == 202
        drain(queue)
        out["replayed"] = await client.post(url + "/v1/events", content=body, headers=headers)
        out["altered"] = await client.post(url + "/v1/events", content=body.replace(b"node1", b"node9"), headers=headers)
        body, headers = signed({"type": "notice", "node": "node1", "notice": {"kind": "preempt"}})
        out["no id"] = await client.post(url + "/v1/events", content=body, headers=headers)
        body, headers = signed({"type": "reboot", "node": "node1"})
        out["bad type"] = await client.post(url + "/v1/events", content=body, headers=headers)
        return out, drain(queue)

    answers, events = asyncio.run(serve({"secret_file": str(secret_file)}, steps))
    assert events == []
    for reason in ("unsigned", "forged", "stale", "replayed"):
        assert answers[reason].status_code == 401 and answers[reason].json()["reason"] == reason, reason
    assert answers["altered"].status_code == 401 and answers["altered"].json()["reason"] == "forged"
    assert answers["no id"].status_code == 400 and answers["bad type"].status_code == 400


def test_blind_and_recovered_only_on_change(monkeypatch):
    monkeypatch.setenv("SPOT_MIGRATION_SECRET", SECRET)
    beats = [{"type": "heartbeat", "node": "node3", "blind": b, "error": "HTTP 500" if b else None, "provider": "azure"}
             for b in (False, True, True, True, False, False)]

    async def steps(client, url, queue):
        for beat in beats:
            body, headers = signed(beat)
            assert (await client.post(url + "/v1/events", content=body, headers=headers)).status_code == 202
        return drain(queue)

    events = asyncio.run(serve({}, steps))
    assert [(e["type"], e["node"]) for e in events] == [("blind", "node3"), ("recovered", "node3")]
    assert events[0]["error"] == "HTTP 500"
    every = asyncio.run(serve({"heartbeats": "all"}, steps))
    assert [e["type"] for e in every].count("heartbeat") == len(beats)


@pytest.mark.parametrize(("args", "message"), [
    ({"port": "http"}, "port 'http'"),
    ({"port": 70000}, "port 70000 is not a TCP port"),
    ({"heartbeats": "some"}, "heartbeats 'some'"),
    ({"max_skew": 0}, "max_skew 0"),
    ({"secret": "inline"}, "unknown argument"),
])
def test_bad_arguments_are_named(args, message, monkeypatch):
    monkeypatch.setenv("SPOT_MIGRATION_SECRET", SECRET)
    with pytest.raises(source.ConfigError, match=message):
        asyncio.run(source.main(asyncio.Queue(), args))


def test_secret_must_exist_and_be_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SPOT_MIGRATION_SECRET", raising=False)
    with pytest.raises(source.ConfigError, match="SPOT_MIGRATION_SECRET"):
        asyncio.run(source.main(asyncio.Queue(), {}))
    loose = tmp_path / "secret"
    loose.write_text(SECRET)
    loose.chmod(0o640)
    with pytest.raises(source.ConfigError, match="mode 0640"):
        asyncio.run(source.main(asyncio.Queue(), {"secret_file": str(loose)}))
    loose.chmod(0o600)
    loose.write_text("short")
    with pytest.raises(source.ConfigError, match="at least 16"):
        asyncio.run(source.main(asyncio.Queue(), {"secret_file": str(loose)}))
