"""A small HTTP server that answers like the AWX / Automation Controller REST API for the calls the watcher makes,
and records every request (method, path, query, JSON body, Authorization) so tests can assert on them exactly."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FINISHED = ("successful", "failed", "error", "canceled")


class FakeAWX:
    """``prefix`` is ``/api/v2/`` (AWX) or ``/api/controller/v2/`` (AAP 2.5+ gateway, whose ``/api/`` lists
    ``apis``). ``events`` are the job events each launched job reports, in order; ``final`` its last status;
    ``ignored`` what launch answers in ``ignored_fields``; ``polls`` how many status reads say running first."""

    def __init__(self, prefix: str = "/api/v2/", template: dict | None = None, events: list[dict] | None = None,
                 final: str = "successful", ignored: dict | None = None, polls: int = 2):
        self.prefix = prefix
        self.template = template or {"id": 7, "name": "spot-migration migrate"}
        self.events = events or []
        self.final = final
        self.ignored = ignored or {}
        self.polls = polls
        self.requests: list[dict] = []
        self.jobs: dict[int, dict] = {}
        self.next_job = 42
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, method: str) -> tuple[str, dict]:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    fake.requests.append({"method": method, "path": parts.path, "query": parse_qs(parts.query),
                                          "json": body, "auth": self.headers.get("Authorization")})
                return parts.path, parse_qs(parts.query)

            def do_GET(self) -> None:  # noqa: N802
                path, query = self._record("GET")
                if path == "/api/":
                    if fake.prefix == "/api/v2/":
                        self._answer(200, {"description": "AWX REST API", "current_version": "/api/v2/"})
                    else:
                        self._answer(200, {"description": "AAP gateway REST API",
                                           "apis": {"controller": "/api/controller/", "eda": "/api/eda/"}})
                elif path == f"{fake.prefix}job_templates/":
                    found = [fake.template] if query.get("name") == [fake.template["name"]] else []
                    self._answer(200, {"count": len(found), "results": found})
                elif path.startswith(f"{fake.prefix}jobs/"):
                    rest = path[len(f"{fake.prefix}jobs/"):].strip("/").split("/")
                    job = fake.jobs.get(int(rest[0]))
                    if job is None:
                        self._answer(404, {"detail": "Not found."})
                    elif len(rest) == 1:
                        with fake.lock:
                            job["polls"] += 1
                            status = "running" if job["polls"] <= fake.polls else job["final"]
                            if job["cancelled"]:
                                status = "canceled"
                        # Like AWX, events are saved after the fact: a finished job may still be missing some, and
                        # says so with event_processing_finished.
                        self._answer(200, {"id": job["id"], "status": status, "event_processing_finished":
                                           status in FINISHED and len(job["events"]) <= job["polls"] * 2})
                    elif rest[1] == "job_events":
                        after = int((query.get("id__gt") or ["0"])[0])
                        seen = job["events"][:job["polls"] * 2]  # events appear while the job runs
                        self._answer(200, {"count": len(seen), "next": None,
                                           "results": [e for e in seen if e["id"] > after]})
                    else:
                        self._answer(404, {"detail": "Not found."})
                else:
                    self._answer(404, {"detail": "Not found."})

            def do_POST(self) -> None:  # noqa: N802
                path = self._record("POST")[0]
                tid = fake.template["id"]
                if path == f"{fake.prefix}job_templates/{tid}/launch/":
                    with fake.lock:
                        job = fake.next_job
                        fake.next_job += 1
                        fake.jobs[job] = {"id": job, "polls": 0, "final": fake.final, "cancelled": False,
                                          "events": [dict(e, id=i + 1, job=job) for i, e in enumerate(fake.events)]}
                    self._answer(201, {"job": job, "id": job, "ignored_fields": fake.ignored, "status": "pending"})
                elif path.startswith(f"{fake.prefix}jobs/") and path.endswith("/cancel/"):
                    job = fake.jobs.get(int(path[len(f"{fake.prefix}jobs/"):].split("/")[0]))
                    if job:
                        job["cancelled"] = True
                    self._answer(202, {})
                else:
                    self._answer(404, {"detail": "Not found."})

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAWX:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
