"""The watcher's HTTP endpoint: signed agent pushes (``POST /v1/events``), ``GET /healthz`` and
``GET /metrics``. Verification is the collection's own ``_signing`` code, shared with the agent and EDA."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .. import module_utils

SIGNING = module_utils("_signing")

MAX_BODY = 256 * 1024
MAX_DEPTH = 32  # events are a few levels deep; a body nested deeper is refused before it is parsed


def nesting(body: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep the JSON arrays and objects in ``body`` nest (strings skipped), counting stops past ``limit``: the
    parser's recursion is never reached by a hostile body."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


class PushServer(ThreadingHTTPServer):
    daemon_threads = True
    # A burst of pushes (a wave of notices, or a flood of forged ones) waits in the kernel's queue rather than being
    # reset: socketserver's default backlog is 5.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], verify: Callable[[dict, bytes], None],
                 handle_event: Callable[[dict], dict], health: Callable[[], tuple[bool, dict]],
                 metrics: Callable[[], tuple[bytes, str]], reject: Callable[[str, str], None],
                 sign: Callable[[bytes], dict] | None = None):
        self.verify = verify
        self.sign = sign
        self.handle_event = handle_event
        self.health = health
        self.metrics = metrics
        self.reject = reject
        super().__init__(address, _Handler)
        self.thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request leaves nothing to answer and no traceback in the log."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: PushServer
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may take to send its request (a slow one does not hold a thread for ever)

    def _reply(self, status: int, body: Any, content_type: str = "application/json", signed: bool = False) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        if signed and self.server.sign is not None:
            # Acknowledgements carry instructions (stop a fenced copy, replicate there): the agent acts on them only
            # when they are signed with the shared secret and name its own push's nonce.
            for name, value in self.server.sign(data).items():
                self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            ok, detail = self.server.health()
            self._reply(200 if ok else 503, detail)
        elif self.path == "/metrics":
            body, content_type = self.server.metrics()
            self._reply(200, body, content_type)
        else:
            self._reply(404, {"error": f"no such endpoint: GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/events":
            self._reply(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.server.reject("malformed", self.client_address[0])
            self._reply(413 if length > MAX_BODY else 400, {"error": "bad Content-Length"})
            return
        body = self.rfile.read(length)
        if len(body) < length:
            return  # the client closed before sending its whole body: nobody to answer
        try:
            self.server.verify(dict(self.headers.items()), body)
        except PermissionError as exc:
            reason = getattr(exc, "reason", "forged")
            self.server.reject(reason, self.client_address[0])
            self._reply(401, {"error": str(exc), "reason": reason})
            return
        try:
            if nesting(body) > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            event = json.loads(body)
            if not isinstance(event, dict) or event.get("type") not in ("notice", "heartbeat") or not event.get("node"):
                raise ValueError("an event is an object with type notice or heartbeat and a node")
        except (ValueError, RecursionError) as exc:
            self.server.reject("malformed", self.client_address[0])
            self._reply(400, {"error": f"bad event: {exc}"})
            return
        try:
            answer = self.server.handle_event(event)
        except LookupError as exc:
            self._reply(404, {"error": str(exc)})
            return
        self._reply(202, dict(answer, in_reply_to=self.headers.get(SIGNING.NONCE_HEADER)), signed=True)

    def log_message(self, *args: Any) -> None:
        pass
