"""An Event-Driven Ansible event source for the pushes of spot.migration's eviction agents.

It is the watcher's receiving end without the watcher: the same ``POST /v1/events`` endpoint, the same HMAC
verification (``plugins/module_utils/_signing.py``, shared with the agent and the watcher), and each accepted push
becomes an event for the rulebook.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
short_description: Receive signed eviction notices and heartbeats from spot.migration eviction agents.
description:
  - An HTTP receiver for the pushes of the C(spot.migration.eviction_agent) role's agents
    (C(POST /v1/events)), verified exactly like the watcher does it (HMAC-SHA256 over timestamp, nonce and
    body; stale, replayed, forged and unsigned pushes are refused with HTTP 401 and never become events).
  - "Each notice push becomes an event C({type: notice, node, notice, evicting, notice_id, provider, kind,
    deadline, seconds_left, detected_at, signalled_at, signalled_epoch, delivery}) where C(notice) is the
    normalised notice, C(signalled_epoch) the Unix time the agent asked the workloads to checkpoint (0 when it asked
    none; pass it to the migrate playbook as C(signalled_at)) and C(delivery) counts how often this source has
    seen that C(notice_id) (agents push until acknowledged, and re-push after losing their state; throttle on
    C(notice_id) in the rulebook)."
  - "Heartbeats become events when a node's state changes: C(type: blind) when its agent cannot read the
    metadata service (with C(error)), C(type: recovered) when it can again, C(type: heartbeat) for every
    heartbeat only with O(heartbeats=all)."
  - Acknowledges with HTTP 202 only after the event is on the queue, so an agent retries anything this source did
    not take. C(GET /healthz) answers 200.
  - The secret comes from O(secret_file) (refused when group or others can read it) or the environment variable
    O(secret_env); never from the rulebook itself.
options:
  host:
    description: Address to listen on.
    type: str
    default: 127.0.0.1
  port:
    description: TCP port to listen on (the agents' C(eviction_agent_watcher_url) points here).
    type: int
    default: 8787
  secret_file:
    description: File holding the shared HMAC secret, readable by the owner only.
    type: str
  secret_env:
    description: Environment variable holding the secret when O(secret_file) is not set.
    type: str
    default: SPOT_MIGRATION_SECRET
  max_skew:
    description: Pushes signed further than this many seconds from this clock are refused as stale.
    type: float
    default: 300
  heartbeats:
    description: C(changes) emits blind/recovered events only; C(all) also one event per heartbeat; C(none) neither.
    type: str
    choices: [changes, all, none]
    default: changes
"""

EXAMPLES = r"""
- name: Migrate off spot nodes that are being taken away
  hosts: all
  sources:
    - spot.migration.eviction_notices:
        host: 0.0.0.0
        port: 8787
        secret_file: /etc/spot-migration/secret
  rules:
    - name: Evicting notice
      condition: event.type == "notice" and event.evicting == true
      throttle:
        once_within: 15 minutes
        group_by_attributes:
          - event.notice_id
      action:
        run_playbook:
          name: spot.migration.migrate
          extra_vars:
            source: "{{ event.node }}"
"""

import asyncio
import importlib.util
import json
import logging
import os
import stat
import time
from typing import Any

from aiohttp import web


def _shared_signing():
    """The collection's own ``plugins/module_utils/_signing.py`` (the watcher and the agent use the same file).
    ansible-rulebook runs event sources by path, without the collections root on ``sys.path``; then it is loaded
    from where this file sits in the collection."""
    try:
        from ansible_collections.spot.migration.plugins.module_utils import _signing  # noqa: PLC0415

        return _signing
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "..", "..", "plugins", "module_utils", "_signing.py")
        spec = importlib.util.spec_from_file_location("spot_migration_signing", os.path.normpath(path))
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


_signing = _shared_signing()
DEFAULT_MAX_SKEW = _signing.DEFAULT_MAX_SKEW
SignatureError = _signing.SignatureError
load_secret = _signing.load_secret
verify = _signing.verify

LOG = logging.getLogger("spot.migration.eviction_notices")
MAX_BODY = 256 * 1024
NOTICE_FIELDS = ("notice_id", "provider", "kind", "action", "deadline", "seconds_left", "instance_id")


class ConfigError(ValueError):
    """Bad arguments: the message names the failing value."""


def read_secret(args: dict[str, Any]) -> bytes:
    try:
        return _read_secret(args)
    except SignatureError as exc:  # too short or empty
        raise ConfigError(str(exc)) from None


def _read_secret(args: dict[str, Any]) -> bytes:
    path = args.get("secret_file")
    if path:
        path = os.path.expanduser(str(path))
        try:
            mode = os.stat(path).st_mode
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"secret_file {path!r} cannot be read: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"secret_file {path!r} has mode {stat.S_IMODE(mode):04o}: group and others must not "
                              "have access (chmod 600)")
        return load_secret(text, f"secret_file {path!r}")
    env = str(args.get("secret_env") or "SPOT_MIGRATION_SECRET")
    if not os.environ.get(env):
        raise ConfigError(f"no secret: set secret_file, or the environment variable {env}")
    return load_secret(os.environ[env], f"${env}")


def check_args(args: dict[str, Any]) -> dict[str, Any]:
    known = {"host", "port", "secret_file", "secret_env", "max_skew", "heartbeats"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = {"host": str(args.get("host") or "127.0.0.1"), "heartbeats": str(args.get("heartbeats") or "changes")}
    try:
        out["port"] = int(args.get("port", 8787))
        out["max_skew"] = float(args.get("max_skew", DEFAULT_MAX_SKEW))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"port {args.get('port')!r} / max_skew {args.get('max_skew')!r}: {exc}") from exc
    if not 0 <= out["port"] <= 65535:
        raise ConfigError(f"port {out['port']} is not a TCP port")
    if out["max_skew"] <= 0:
        raise ConfigError(f"max_skew {out['max_skew']} must be positive")
    if out["heartbeats"] not in ("changes", "all", "none"):
        raise ConfigError(f"heartbeats {out['heartbeats']!r} is not one of changes, all, none")
    return out


class Receiver:
    """Verification, replay memory and the translation of pushes into events."""

    def __init__(self, queue: asyncio.Queue, secret: bytes, max_skew: float, heartbeats: str) -> None:
        self.queue = queue
        self.secret = secret
        self.max_skew = max_skew
        self.heartbeats = heartbeats
        self.nonces: dict[str, float] = {}
        self.deliveries: dict[str, int] = {}
        self.blind: dict[str, bool] = {}

    def seen_nonce(self, nonce: str, sent: float) -> bool:
        now = time.time()
        if len(self.nonces) > 10000:  # anything older than the skew window is refused as stale anyway
            self.nonces = {n: t for n, t in self.nonces.items() if now - t <= 2 * self.max_skew}
        if nonce in self.nonces:
            return True
        self.nonces[nonce] = sent
        return False

    def events(self, push: dict[str, Any]) -> list[dict[str, Any]]:
        node = push["node"]
        if push["type"] == "notice":
            notice = push.get("notice")
            if not isinstance(notice, dict) or not notice.get("notice_id"):
                raise ValueError("a notice push carries a normalised notice with a notice_id")
            notice_id = str(notice["notice_id"])
            self.deliveries[notice_id] = self.deliveries.get(notice_id, 0) + 1
            event = {"type": "notice", "node": node, "notice": notice, "evicting": bool(notice.get("evicting")),
                     **{k: notice.get(k) for k in NOTICE_FIELDS},
                     "detected_at": push.get("detected_at"), "signalled_at": push.get("signalled_at"),
                     "signalled_epoch": float(push.get("signalled_epoch") or 0.0),
                     "signalled": push.get("signalled") or [],
                     "delivery": self.deliveries[notice_id]}
            return [event]
        blind = bool(push.get("blind"))
        before = self.blind.get(node)
        self.blind[node] = blind
        out = []
        base = {"node": node, "provider": push.get("provider"), "sent_at": push.get("sent_at")}
        if blind and before is not True and self.heartbeats != "none":
            out.append({"type": "blind", **base, "error": push.get("error"), "blind_since": push.get("blind_since")})
        elif not blind and before is True and self.heartbeats != "none":
            out.append({"type": "recovered", **base, "last_ok_at": push.get("last_ok_at")})
        if self.heartbeats == "all":
            out.append({"type": "heartbeat", **base, "blind": blind, "error": push.get("error"),
                        "pending": push.get("pending")})
        return out

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if len(body) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        try:
            verify(self.secret, dict(request.headers), body, self.seen_nonce, max_skew=self.max_skew)
        except SignatureError as exc:
            LOG.warning("push from %s refused (%s): %s", request.remote, exc.reason, exc)
            return web.json_response({"error": str(exc), "reason": exc.reason}, status=401)
        try:
            push = json.loads(body)
            if not isinstance(push, dict) or push.get("type") not in ("notice", "heartbeat") or not push.get("node"):
                raise ValueError("an event is an object with type notice or heartbeat and a node")
            events = self.events(push)
        except ValueError as exc:
            return web.json_response({"error": f"bad event: {exc}"}, status=400)
        for event in events:
            await self.queue.put(event)
        return web.json_response({"ok": True, "events": len(events)}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def main(queue: asyncio.Queue, args: dict[str, Any]) -> None:
    """Serve until cancelled; every accepted push goes onto ``queue`` as zero or more events."""
    conf = check_args(args)
    receiver = Receiver(queue, read_secret(args), conf["max_skew"], conf["heartbeats"])
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/events", receiver.handle)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, conf["host"], conf["port"])
    await site.start()
    LOG.info("spot.migration.eviction_notices listening on %s:%d", conf["host"], conf["port"])
    try:
        await asyncio.Future()  # until the rulebook stops (cancellation)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    # Only for trying it by hand: print events as they arrive.
    class MockQueue(asyncio.Queue):
        async def put(self, item: Any) -> None:
            print(json.dumps(item), flush=True)

    asyncio.run(main(MockQueue(), {"port": 8787}))
