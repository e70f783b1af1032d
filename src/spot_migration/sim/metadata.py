"""A strict simulator of the AWS, GCP and Azure instance metadata services.

It speaks each dialect as the clouds document it, awkward parts included:

* AWS IMDS: ``PUT /latest/api/token`` with a TTL header (1-21600 s, else 400),
  tokens checked on reads (401 when invalid or expired; optional v2-only mode
  where a read without a token is 401 too), ``X-Forwarded-For`` refused on the
  token PUT, ``spot/instance-action`` 404 while quiet and a fixed ``time``
  across polls, ``spot/termination-time``, ``events/recommendations/rebalance``,
  ``events/maintenance/scheduled`` (``[]`` when none), identity paths. Every
  answer is ``text/plain``, JSON included, and 404s carry IMDS's HTML page.
* GCE: ``Metadata-Flavor: Google`` required (403 without) and echoed on every
  answer, ``X-Forwarded-For`` refused, ``instance/preempted`` TRUE/FALSE,
  ``instance/maintenance-event``, content ETags and hanging GETs
  (``wait_for_change``, ``last_etag``, ``timeout_sec``).
* Azure IMDS: ``Metadata: true`` required (400 without), ``api-version``
  required and checked, Scheduled Events with ``DocumentIncarnation`` bumped on
  every change, events for this VM or others, Scheduled -> Started when
  ``NotBefore`` passes or a ``StartRequests`` POST approves it (``NotBefore``
  then empty), ``/metadata/instance/compute``.

A control API under ``/_sim/`` injects and clears notices and faults (delays,
5xx bursts, 503 blips, garbage or oversized bodies, redirects, dropped or hung
connections). It is never subject to the faults.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CLOUDS = ("aws", "gcp", "azure")
NOTICE_KINDS = ("spot_interruption", "preempt", "terminate", "rebalance", "maintenance")
# nohang: GCP's wait_for_change answers at once (a metadata service that does not hang); drip: a 200 whose body
# comes one byte every ``seconds`` (a socket timeout, checked per read, does not bound it).
FAULT_MODES = ("delay", "error", "blip", "garbage", "oversize", "redirect", "drop", "hang", "nohang", "drip")
AZURE_API_VERSIONS = (
    "2017-03-01", "2017-08-01", "2017-11-01", "2018-02-01", "2018-10-01", "2019-03-11", "2019-06-01",
    "2019-08-01", "2020-06-01", "2020-07-01", "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01",
    "2021-02-01", "2021-03-01", "2021-05-01", "2021-08-01", "2021-10-01", "2021-11-01", "2021-11-15",
    "2021-12-13", "2023-07-01",
)
AZURE_EVENT_TYPES = ("Freeze", "Reboot", "Redeploy", "Preempt", "Terminate")
AWS_404 = (
    '<?xml version="1.0" encoding="iso-8859-1"?>\n'
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
    '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
    '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
    " <head>\n  <title>404 - Not Found</title>\n </head>\n <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>\n"
)
MAX_HANG_S = 3600


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)


class ControlError(ValueError):
    """A bad request to the control API; the message names the value."""


@dataclass
class Fault:
    mode: str
    count: int | None = None  # None: until cleared
    path: str = ""  # only requests whose path starts with this
    seconds: float = 0.0
    status: int = 500
    size: int = 1 << 20
    location: str = "http://127.0.0.1:9/elsewhere"

    def describe(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Notice:
    kind: str
    created: float
    deadline: float
    action: str
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()).upper())
    resources: list[str] = field(default_factory=list)
    event_type: str = ""
    status: str = "Scheduled"
    code: str = "system-reboot"

    def public(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["deadline_iso"] = _iso(self.deadline)
        return data


class MetadataState:
    """Everything one simulated instance knows; thread-safe, wakes hanging GETs on change."""

    def __init__(self, cloud: str, instance_id: str | None = None, name: str | None = None,
                 v2_only: bool = False, clock=time.time):
        if cloud not in CLOUDS:
            raise ControlError(f"cloud must be one of {', '.join(CLOUDS)}, not {cloud!r}")
        self.cloud = cloud
        self.clock = clock
        self.name = name or f"{cloud}-node"
        self.instance_id = instance_id or {
            "aws": "i-" + secrets.token_hex(8 + 1)[:17],
            "gcp": str(1000000000000000000 + secrets.randbelow(10**18)),
            "azure": str(uuid.uuid4()),
        }[cloud]
        self.v2_only = v2_only
        self.zone = {"aws": "us-east-1a", "gcp": "projects/123456789012/zones/us-central1-a",
                     "azure": "1"}[cloud]
        self.notices: list[Notice] = []
        self.faults: list[Fault] = []
        self.tokens: dict[str, float] = {}
        self.incarnation = 1
        self.acknowledged: list[str] = []
        self.requests: dict[str, int] = {}
        self.cond = threading.Condition()
        self.closing = False

    # ------------------------------------------------------------------ control
    def inject(self, spec: dict[str, Any]) -> Notice:
        kind = spec.get("kind") or spec.get("notice")
        if kind not in NOTICE_KINDS:
            raise ControlError(f"notice kind must be one of {', '.join(NOTICE_KINDS)}, not {kind!r}")
        now = self.clock()
        default_window = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}[self.cloud]
        try:
            in_seconds = float(spec.get("in_seconds", default_window))
        except (TypeError, ValueError):
            raise ControlError(f"in_seconds must be a number, not {spec.get('in_seconds')!r}") from None
        notice = Notice(kind=kind, created=now, deadline=now + in_seconds, action=str(spec.get("action") or ""))
        if self.cloud == "aws":
            if kind in ("spot_interruption", "preempt", "terminate"):
                notice.kind = "spot_interruption"
                notice.action = notice.action or "terminate"
                if notice.action not in ("terminate", "stop", "hibernate"):
                    raise ControlError(f"AWS spot action must be terminate, stop or hibernate, not {notice.action!r}")
            elif kind == "maintenance":
                notice.code = str(spec.get("code") or "system-reboot")
                notice.event_id = "instance-event-" + secrets.token_hex(9)[:17]
        elif self.cloud == "gcp":
            if kind == "rebalance":
                raise ControlError("GCP has no rebalance recommendations; use preempt or maintenance")
            if kind in ("spot_interruption", "preempt", "terminate"):
                notice.kind = "preempt"
            else:
                notice.action = notice.action or "MIGRATE_ON_HOST_MAINTENANCE"
                if notice.action not in ("MIGRATE_ON_HOST_MAINTENANCE", "TERMINATE_ON_HOST_MAINTENANCE"):
                    raise ControlError("GCP maintenance action must be MIGRATE_ON_HOST_MAINTENANCE or "
                                       f"TERMINATE_ON_HOST_MAINTENANCE, not {notice.action!r}")
        else:
            if kind == "rebalance":
                raise ControlError("Azure has no rebalance recommendations; use preempt, terminate or maintenance")
            event_type = spec.get("event_type") or {"spot_interruption": "Preempt", "preempt": "Preempt",
                                                     "terminate": "Terminate", "maintenance": "Reboot"}[kind]
            if event_type not in AZURE_EVENT_TYPES:
                raise ControlError(f"Azure event_type must be one of {', '.join(AZURE_EVENT_TYPES)}, not {event_type!r}")
            notice.event_type = event_type
            resources = spec.get("resources") or [self.name]
            if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
                raise ControlError(f"resources must be a list of VM names, not {resources!r}")
            notice.resources = resources
            status = spec.get("status", "Scheduled")
            if status not in ("Scheduled", "Started"):
                raise ControlError(f"status must be Scheduled or Started, not {status!r}")
            notice.status = status
        with self.cond:
            if self.cloud == "gcp":
                # One value per key: a new preemption/maintenance replaces the old one.
                self.notices = [n for n in self.notices if n.kind != notice.kind]
            if self.cloud == "aws" and notice.kind in ("spot_interruption", "rebalance"):
                self.notices = [n for n in self.notices if n.kind != notice.kind]
            self.notices.append(notice)
            self._changed()
        return notice

    def clear(self, kind: str | None = None) -> int:
        with self.cond:
            before = len(self.notices)
            self.notices = [n for n in self.notices if kind is not None and n.kind != kind]
            if before != len(self.notices):
                self._changed()
            return before - len(self.notices)

    def add_fault(self, spec: dict[str, Any]) -> Fault:
        mode = spec.get("mode")
        if mode not in FAULT_MODES:
            raise ControlError(f"fault mode must be one of {', '.join(FAULT_MODES)}, not {mode!r}")
        fault = Fault(mode=mode)
        try:
            if spec.get("count") is not None:
                fault.count = int(spec["count"])
            fault.path = str(spec.get("path", ""))
            fault.seconds = float(spec.get("seconds", 2.0 if mode == "delay" else 1.0 if mode == "drip" else MAX_HANG_S))
            fault.status = int(spec.get("status", 503 if mode == "blip" else 500))
            fault.size = int(spec.get("size", fault.size))
            fault.location = str(spec.get("location", fault.location))
        except (TypeError, ValueError) as exc:
            raise ControlError(f"bad fault {spec!r}: {exc}") from None
        with self.cond:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.cond:
            self.faults = []
            self.cond.notify_all()

    def take_fault(self, path: str) -> Fault | None:
        with self.cond:
            for fault in self.faults:
                if path.startswith(fault.path):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def _changed(self) -> None:
        self.incarnation += 1
        self.cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self.cond:
            self._advance()
            return {
                "cloud": self.cloud, "instance_id": self.instance_id, "name": self.name,
                "v2_only": self.v2_only, "incarnation": self.incarnation,
                "notices": [n.public() for n in self.notices],
                "faults": [f.describe() for f in self.faults],
                "acknowledged": list(self.acknowledged), "requests": dict(self.requests),
                # Tests check that tokens never leak into logs; a real IMDS never lists them.
                "tokens": list(self.tokens),
            }

    def count(self, key: str) -> None:
        with self.cond:
            self.requests[key] = self.requests.get(key, 0) + 1

    def _advance(self) -> None:
        """Azure: a Scheduled event whose NotBefore has passed is Started."""
        if self.cloud != "azure":
            return
        now = self.clock()
        changed = False
        for notice in self.notices:
            if notice.status == "Scheduled" and notice.deadline <= now:
                notice.status = "Started"
                changed = True
        if changed:
            self._changed()


def _etag(key: str, value: str) -> str:
    return hashlib.sha256(f"{key}\0{value}".encode()).hexdigest()[:16]


class MetadataHandler(BaseHTTPRequestHandler):
    server_version = "spot-migration-metadata-sim"
    sys_version = ""
    protocol_version = "HTTP/1.0"

    @property
    def state(self) -> MetadataState:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # ---------------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes | str, content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, 1 << 20)) if length > 0 else b""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/_sim/"):
            self._control(url.path, parse_qs(url.query))
            return
        self.state.count(f"{self.command} {url.path}")
        fault = self.state.take_fault(url.path)
        if fault is not None and self._apply_fault(fault):
            return
        cloud = self.state.cloud
        query = parse_qs(url.query, keep_blank_values=True)
        getattr(self, f"_{cloud}")(url.path, query)

    def _apply_fault(self, fault: Fault) -> bool:
        """Apply one fault; True when it replaced the answer."""
        if fault.mode == "delay":
            time.sleep(fault.seconds)
            return False
        if fault.mode == "nohang":
            self.no_hang = True
            return False
        if fault.mode == "drip":
            body = b'{"drip": "' + b"x" * 40 + b'"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in self._cloud_headers().items():
                self.send_header(key, value)
            self.end_headers()
            try:
                for i in range(len(body)):
                    if self.state.closing:
                        break
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(fault.seconds)
            except OSError:
                pass  # the client gave up: that is the point
            self.close_connection = True
            return True
        if fault.mode in ("error", "blip"):
            self._send(fault.status, "Service Unavailable" if fault.status == 503 else "Internal Server Error",
                       headers=self._cloud_headers())
        elif fault.mode == "garbage":
            self._send(200, b"\x00\xff<<not-json>>\xfe{{" + secrets.token_bytes(32), headers=self._cloud_headers())
        elif fault.mode == "oversize":
            self._send(200, b"{" + b" " * fault.size + b"}", headers=self._cloud_headers())
        elif fault.mode == "redirect":
            self._send(302, "", headers={"Location": fault.location})
        elif fault.mode == "drop":
            self.close_connection = True
            self.connection.close()
        elif fault.mode == "hang":
            with self.state.cond:
                end = time.monotonic() + fault.seconds
                while not self.state.closing and time.monotonic() < end:
                    self.state.cond.wait(min(1.0, end - time.monotonic()))
            self.close_connection = True
            self.connection.close()
        return True

    def _cloud_headers(self) -> dict[str, str]:
        return {"Metadata-Flavor": "Google"} if self.state.cloud == "gcp" else {}

    # ---------------------------------------------------------------- control API
    def _control(self, path: str, query: dict[str, list[str]]) -> None:
        state = self.state
        try:
            raw = self._body()
            spec = json.loads(raw) if raw else {}
            if not isinstance(spec, dict):
                raise ControlError(f"control body must be a JSON object, not {raw[:80]!r}")
            if path == "/_sim/state" and self.command == "GET":
                result: Any = state.snapshot()
            elif path == "/_sim/notice" and self.command == "POST":
                result = state.inject(spec).public()
            elif path == "/_sim/clear" and self.command == "POST":
                result = {"cleared": state.clear(spec.get("kind"))}
            elif path == "/_sim/fault" and self.command == "POST":
                result = state.add_fault(spec).describe()
            elif path == "/_sim/fault" and self.command == "DELETE":
                state.clear_faults()
                result = {"faults": []}
            elif path == "/_sim/config" and self.command == "POST":
                if "v2_only" in spec:
                    state.v2_only = bool(spec["v2_only"])
                result = state.snapshot()
            else:
                self._send(404, json.dumps({"error": f"no control endpoint {self.command} {path}"}),
                           "application/json")
                return
        except json.JSONDecodeError as exc:
            self._send(400, json.dumps({"error": f"control body is not JSON: {exc}"}), "application/json")
            return
        except ControlError as exc:
            self._send(400, json.dumps({"error": str(exc)}), "application/json")
            return
        self._send(200, json.dumps(result), "application/json")

    # ---------------------------------------------------------------- AWS
    def _aws(self, path: str, query: dict[str, list[str]]) -> None:
        state = self.state
        if path == "/latest/api/token":
            if self.command != "PUT":
                self._send(405, "", headers={"Allow": "OPTIONS, PUT"})
                return
            if self.headers.get("X-Forwarded-For"):
                self._send(403, "Forbidden")
                return
            ttl_text = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            try:
                ttl = int(ttl_text) if ttl_text is not None else None
            except ValueError:
                ttl = None
            if ttl is None or not 1 <= ttl <= 21600:
                self._send(400, "Bad Request")
                return
            token = secrets.token_urlsafe(42)
            with state.cond:
                state.tokens[token] = time.monotonic() + ttl
            self._send(200, token, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})
            return
        if self.command != "GET":
            self._send(405, "", headers={"Allow": "GET"})
            return
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token is not None:
            with state.cond:
                expiry = state.tokens.get(token)
            if expiry is None or expiry < time.monotonic():
                self._send(401, "Unauthorized")
                return
        elif state.v2_only:
            self._send(401, "Unauthorized")
            return
        prefix = "/latest/meta-data/"
        if not path.startswith(prefix) and path != "/latest/meta-data":
            self._send(404, AWS_404, "text/html")
            return
        key = path[len(prefix):]
        with state.cond:
            spot = next((n for n in state.notices if n.kind == "spot_interruption"), None)
            rebalance = next((n for n in state.notices if n.kind == "rebalance"), None)
            maintenance = [n for n in state.notices if n.kind == "maintenance"]
        values: dict[str, str | None] = {
            "instance-id": state.instance_id,
            "instance-life-cycle": "spot",
            "instance-type": "p4d.24xlarge",
            "hostname": state.name,
            "placement/availability-zone": state.zone,
            "placement/region": state.zone[:-1],
            "spot/instance-action": (json.dumps({"action": spot.action, "time": _iso(spot.deadline)})
                                     if spot else None),
            "spot/termination-time": _iso(spot.deadline) if spot and spot.action == "terminate" else None,
            "events/recommendations/rebalance": (json.dumps({"noticeTime": _iso(rebalance.created)})
                                                 if rebalance else None),
            "events/maintenance/scheduled": json.dumps([
                {"NotBefore": time.strftime("%d %b %Y %H:%M:%S GMT", time.gmtime(n.deadline)),
                 "Code": n.code, "Description": "scheduled maintenance", "EventId": n.event_id,
                 "NotAfter": time.strftime("%d %b %Y %H:%M:%S GMT", time.gmtime(n.deadline + 1200)),
                 "State": "active"} for n in maintenance]),
        }
        if key in ("", "/"):
            self._send(200, "\n".join(sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in values})))
            return
        value = values.get(key.rstrip("/"))
        if value is None:
            self._send(404, AWS_404, "text/html")
            return
        self._send(200, value)

    # ---------------------------------------------------------------- GCP
    def _gcp(self, path: str, query: dict[str, list[str]]) -> None:
        state = self.state
        if self.headers.get("X-Forwarded-For"):
            self._send(403, "Request had X-Forwarded-For header, which is not allowed.",
                       headers={"Metadata-Flavor": "Google"})
            return
        if self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, "Missing Metadata-Flavor:Google header.", "text/html; charset=UTF-8")
            return
        if self.command != "GET":
            self._send(405, "Method Not Allowed", headers={"Metadata-Flavor": "Google"})
            return
        base = "/computeMetadata/v1/"
        if path in (base, base.rstrip("/")):
            self._gcp_value("", "instance/\nproject/\n")
            return
        if not path.startswith(base + "instance/") and not path.startswith(base + "project/"):
            self._send(404, "Not Found", "text/html; charset=UTF-8", {"Metadata-Flavor": "Google"})
            return
        key = path[len(base):]
        getter = self._gcp_values().get(key)
        if getter is None:
            self._send(404, "Not Found", "text/html; charset=UTF-8", {"Metadata-Flavor": "Google"})
            return
        if query.get("wait_for_change", ["false"])[0].lower() == "true" and not getattr(self, "no_hang", False):
            last = query.get("last_etag", [""])[0]
            try:
                timeout = float(query.get("timeout_sec", [str(MAX_HANG_S)])[0])
            except ValueError:
                self._send(400, "Invalid timeout_sec", headers={"Metadata-Flavor": "Google"})
                return
            end = time.monotonic() + max(0.0, min(timeout, MAX_HANG_S))
            with state.cond:
                # Without last_etag the server waits for the next change.
                first = _etag(key, getter())
                while not state.closing:
                    current = _etag(key, getter())
                    if (last and current != last) or (not last and current != first):
                        break
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    state.cond.wait(min(left, 1.0))
        self._gcp_value(key, getter())

    def _gcp_values(self) -> dict[str, Any]:
        state = self.state

        def preempted() -> str:
            return "TRUE" if any(n.kind == "preempt" for n in state.notices) else "FALSE"

        def maintenance() -> str:
            event = next((n for n in state.notices if n.kind == "maintenance"), None)
            return event.action if event else "NONE"

        return {
            "instance/id": lambda: state.instance_id,
            "instance/name": lambda: state.name,
            "instance/hostname": lambda: f"{state.name}.c.project.internal",
            "instance/zone": lambda: state.zone,
            "instance/preempted": preempted,
            "instance/maintenance-event": maintenance,
            "instance/scheduling/preemptible": lambda: "TRUE",
            "instance/scheduling/on-host-maintenance": lambda: "TERMINATE",
            "project/project-id": lambda: "spot-migration-sim",
        }

    def _gcp_value(self, key: str, value: str) -> None:
        self._send(200, value, "application/text",
                   {"Metadata-Flavor": "Google", "ETag": _etag(key, value)})

    # ---------------------------------------------------------------- Azure
    def _azure(self, path: str, query: dict[str, list[str]]) -> None:
        state = self.state
        if self.headers.get("X-Forwarded-For"):
            self._azure_error(400, "Bad request. Request contains X-Forwarded-For header")
            return
        if self.headers.get("Metadata", "").lower() != "true":
            self._azure_error(400, "Bad request. Required metadata header not specified")
            return
        if not path.startswith("/metadata/"):
            self._azure_error(404, "Not found")
            return
        version = query.get("api-version", [""])[0]
        if not version:
            self._azure_error(400, "Bad request. api-version was not specified in the request. "
                                   "For more information refer to aka.ms/azureimds")
            return
        if version not in AZURE_API_VERSIONS:
            self._azure_error(400, "Bad request. api-version is invalid or was not specified in the correct format. "
                                   "For more information refer to aka.ms/azureimds")
            return
        if path == "/metadata/scheduledevents":
            if self.command == "POST":
                self._azure_ack()
                return
            with state.cond:
                state._advance()
                doc = {"DocumentIncarnation": state.incarnation, "Events": [
                    {"EventId": n.event_id, "EventStatus": n.status, "EventType": n.event_type,
                     "ResourceType": "VirtualMachine", "Resources": list(n.resources),
                     "NotBefore": "" if n.status == "Started" else _http_date(n.deadline),
                     "Description": "", "EventSource": "Platform",
                     "DurationInSeconds": -1 if n.event_type in ("Preempt", "Terminate") else 5}
                    for n in state.notices]}
            self._send(200, json.dumps(doc), "application/json; charset=utf-8")
            return
        compute = {"name": state.name, "vmId": state.instance_id, "location": "eastus", "zone": state.zone,
                   "priority": "Spot", "vmSize": "Standard_ND96asr_v4", "osType": "Linux",
                   "evictionPolicy": "Deallocate"}
        if self.command != "GET":
            self._azure_error(405, "Method not allowed")
            return
        if path == "/metadata/instance":
            self._send(200, json.dumps({"compute": compute, "network": {"interface": []}}), "application/json")
        elif path == "/metadata/instance/compute":
            self._send(200, json.dumps(compute), "application/json")
        elif path.startswith("/metadata/instance/compute/") and path.rsplit("/", 1)[1] in compute:
            value = compute[path.rsplit("/", 1)[1]]
            if query.get("format", [""])[0] == "text":
                self._send(200, str(value))
            else:
                self._send(200, json.dumps(value), "application/json")
        else:
            self._azure_error(404, "Not found")

    def _azure_ack(self) -> None:
        state = self.state
        try:
            body = json.loads(self._body() or b"{}")
            requests = body["StartRequests"]
            ids = [r["EventId"] for r in requests]
        except (ValueError, KeyError, TypeError):
            self._azure_error(400, "Bad request. StartRequests body is malformed")
            return
        with state.cond:
            known = {n.event_id: n for n in state.notices}
            unknown = [i for i in ids if i not in known]
            if unknown:
                self._azure_error(400, f"Bad request. Unknown EventId {unknown[0]}")
                return
            for event_id in ids:
                known[event_id].status = "Started"
                state.acknowledged.append(event_id)
            state._changed()
        self._send(200, "", "application/json")

    def _azure_error(self, status: int, message: str) -> None:
        body: dict[str, Any] = {"error": message}
        if "api-version" in message:
            body["newest-versions"] = list(reversed(AZURE_API_VERSIONS[-3:]))
        self._send(status, json.dumps(body), "application/json; charset=utf-8")


class MetadataServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: MetadataState, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.state = state
        self.verbose = verbose
        super().__init__((host, port), MetadataHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        with self.state.cond:
            self.state.closing = True
            self.state.cond.notify_all()
        super().shutdown()
        self.server_close()


def start_in_thread(cloud: str, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> MetadataServer:
    """Start a simulator on a background thread; stop it with ``server.shutdown()``."""
    server = MetadataServer(MetadataState(cloud, **kwargs), host, port)
    thread = threading.Thread(target=server.serve_forever, name=f"metadata-sim-{cloud}", daemon=True)
    thread.start()
    return server
