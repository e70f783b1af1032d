"""The watcher's AWX / Automation Controller mode: launch the migrate job template through the controller's REST API
and follow the job to its end, feeding its job events to the same state mapping as a local ansible-runner run.

API shapes (AWX and Automation Controller, ``/api/v2/``; AAP 2.5+ through the platform gateway,
``/api/controller/v2/``):

* ``GET  {api}job_templates/?name=NAME``            -> ``{"count": 1, "results": [{"id": 7, ...}]}``
* ``POST {api}job_templates/7/launch/`` ``{"extra_vars": {...}}`` -> 201 ``{"job": 42, "ignored_fields": {...}, ...}``
  (a field the template does not prompt for is dropped and listed in ``ignored_fields``: here that is an error,
  since a migration without its ``source`` would move the wrong node's workloads or none);
* ``GET  {api}jobs/42/``                            -> ``{"status": "pending|waiting|running|successful|failed|error|canceled"}``
* ``GET  {api}jobs/42/job_events/?id__gt=N&order_by=id&page_size=200`` -> ``{"results": [event, ...], "next": ...}``
  (the same ``event`` / ``event_data`` shape as ansible-runner's events);
* ``POST {api}jobs/42/cancel/``                     -> 202.
"""

from __future__ import annotations

from .. import logs
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("successful", "failed", "error", "canceled")


class ControllerError(RuntimeError):
    """The controller refused or failed a request; the message says which and why."""


def read_token(token_file: str | None, token_env: str) -> str:
    """The controller's OAuth2 token: from ``token_file`` (owner-only) or the environment variable (then removed from
    this process's environment, so no ansible-runner artifact can record it)."""
    if token_file:
        path = Path(token_file).expanduser()
        try:
            mode = path.stat().st_mode
            token = path.read_text().strip()
        except OSError as exc:
            raise ControllerError(f"controller token_file {str(path)!r} cannot be read: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ControllerError(f"controller token_file {str(path)!r} has mode {stat.S_IMODE(mode):04o}: group and "
                                  "others must not have access (chmod 600)")
    else:
        token = os.environ.pop(token_env, "").strip()
    if not token:
        raise ControllerError(f"no controller token: set controller.token_file or the environment variable {token_env}")
    return token


class Controller:
    def __init__(self, url: str, token: str, job_template: str | int, api_path: str = "auto", verify: bool = True,
                 timeout: float = 30.0, poll_interval: float = 2.0, log: Callable[[str], None] | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.job_template = job_template
        self.api_path = api_path
        self.poll_interval = poll_interval
        self.log = log or (lambda message: None)
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}",
                                                               "Accept": "application/json"},
                                   verify=verify, timeout=timeout, follow_redirects=False, transport=transport)
        self._api: str | None = None
        self._template_id: int | None = None

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        try:
            resp = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControllerError(f"{method} {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code not in expect:
            raise ControllerError(f"{method} {self.url}{path}: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            return resp.json() if resp.content else {}
        except ValueError as exc:
            raise ControllerError(f"{method} {self.url}{path}: answer is not JSON: {resp.text[:200]!r}") from exc

    def api(self) -> str:
        """The API root: configured, or found from ``GET /api/`` (AWX: ``current_version``; AAP 2.5+ gateway:
        ``apis.controller``)."""
        if self._api:
            return self._api
        if self.api_path != "auto":
            self._api = "/" + self.api_path.strip("/") + "/"
            return self._api
        root = self._request("GET", "/api/")
        if isinstance(root.get("current_version"), str):
            self._api = root["current_version"]
        elif isinstance(root.get("apis"), dict) and root["apis"].get("controller"):
            self._api = root["apis"]["controller"].rstrip("/") + "/v2/"
        else:
            raise ControllerError(f"GET {self.url}/api/ does not look like AWX or the AAP gateway "
                                  f"(no current_version, no apis.controller): {str(root)[:200]}; set controller.api_path")
        return self._api

    def template_id(self) -> int:
        if self._template_id is not None:
            return self._template_id
        if isinstance(self.job_template, int) or str(self.job_template).isdigit():
            self._template_id = int(self.job_template)
            return self._template_id
        found = self._request("GET", f"{self.api()}job_templates/", params={"name": str(self.job_template)})
        results = found.get("results") or []
        if len(results) != 1:
            raise ControllerError(f"job template {self.job_template!r}: {len(results)} found on {self.url} "
                                  "(create it with playbooks/controller_setup.yml, or give its id)")
        self._template_id = int(results[0]["id"])
        return self._template_id

    # ------------------------------------------------------------------ jobs
    def launch(self, extra_vars: dict[str, Any]) -> int:
        tid = self.template_id()
        answer = self._request("POST", f"{self.api()}job_templates/{tid}/launch/", expect=(201,),
                               json={"extra_vars": extra_vars})
        ignored = answer.get("ignored_fields") or {}
        job = answer.get("job") or answer.get("id")
        if ignored:
            if job:  # launched without what we asked: do not let it move anything
                self.cancel(int(job))
            raise ControllerError(f"job template {self.job_template!r} (id {tid}) ignored {', '.join(sorted(ignored))}: "
                                  "turn on 'Prompt on launch' for variables (ask_variables_on_launch) or add a survey; "
                                  f"job {job} was cancelled")
        if not job:
            raise ControllerError(f"launch of job template {tid} answered without a job id: {str(answer)[:200]}")
        return int(job)

    def job(self, job: int) -> dict:
        return self._request("GET", f"{self.api()}jobs/{job}/")

    def status(self, job: int) -> str:
        return str(self.job(job).get("status"))

    def cancel(self, job: int) -> None:
        try:
            self._request("POST", f"{self.api()}jobs/{job}/cancel/", expect=(202, 200, 405))
        except ControllerError as exc:
            self.log(logs.warning(f"controller job {job}: cancel failed: {exc}"))

    def events(self, job: int, after: int) -> list[dict]:
        out: list[dict] = []
        path: str | None = f"{self.api()}jobs/{job}/job_events/"
        params: dict[str, Any] | None = {"id__gt": after, "order_by": "id", "page_size": 200}
        while path:
            page = self._request("GET", path, params=params)
            out.extend(page.get("results") or [])
            nxt = page.get("next")
            path, params = (nxt, None) if nxt else (None, None)
        return out

    def follow(self, job: int, on_event: Callable[[dict], None] | None = None,
               cancel: Callable[[], bool] | None = None, timeout: float | None = None) -> str:
        """Poll until the job finishes (cancelling it when ``cancel()`` says so or ``timeout`` passes); every job event
        goes to ``on_event`` in order, each once. Returns the final status."""
        last, end = 0, (time.monotonic() + timeout) if timeout else None
        cancelled, drain_until = False, None
        while True:
            info = self.job(job)
            state = str(info.get("status"))
            for event in self.events(job, last):
                last = max(last, int(event.get("id") or last))
                if on_event is not None:
                    on_event(event)
            if state in FINISHED:
                # The controller saves events after the fact: read on until it says all are in (or 30 s pass).
                if info.get("event_processing_finished", True):
                    return state
                drain_until = drain_until or time.monotonic() + 30.0
                if time.monotonic() > drain_until:
                    self.log(logs.warning(f"controller job {job}: {state}, but its events were still being processed after 30 s"))
                    return state
            if not cancelled and ((cancel is not None and cancel()) or (end is not None and time.monotonic() > end)):
                self.log(f"controller job {job}: cancelling")
                self.cancel(job)
                cancelled = True
            time.sleep(self.poll_interval)
