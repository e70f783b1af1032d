"""Client for the metadata simulator's control API, and a supervisor that runs simulators as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


class SimulatorError(RuntimeError):
    """The simulator refused a control request or could not be started."""


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        resp = httpx.post(url.rstrip("/") + path, json=body, timeout=5.0)
    except httpx.HTTPError as exc:
        raise SimulatorError(f"metadata simulator at {url} unreachable: {exc}") from None
    if resp.status_code != 200:
        raise SimulatorError(f"metadata simulator at {url} refused {path} {body}: {resp.text}")
    return resp.json()


def inject(url: str, notice: str, in_seconds: float | None = None, **extra: Any) -> dict[str, Any]:
    """Inject a notice (``clear`` removes all notices)."""
    if notice == "clear":
        return _post(url, "/_sim/clear", {})
    body: dict[str, Any] = {"kind": notice}
    if in_seconds is not None:
        body["in_seconds"] = in_seconds
    body.update({k: v for k, v in extra.items() if v is not None})
    return _post(url, "/_sim/notice", body)


def fault(url: str, mode: str, **extra: Any) -> dict[str, Any]:
    """Add a fault (see the simulator's FAULT_MODES)."""
    return _post(url, "/_sim/fault", {"mode": mode, **extra})


def clear_faults(url: str) -> None:
    try:
        httpx.delete(url.rstrip("/") + "/_sim/fault", timeout=5.0)
    except httpx.HTTPError as exc:
        raise SimulatorError(f"metadata simulator at {url} unreachable: {exc}") from None


def state(url: str) -> dict[str, Any]:
    try:
        return httpx.get(url.rstrip("/") + "/_sim/state", timeout=5.0).json()
    except httpx.HTTPError as exc:
        raise SimulatorError(f"metadata simulator at {url} unreachable: {exc}") from None


@dataclass
class SimProcess:
    """A metadata simulator running as its own process, tracked by pid."""

    cloud: str
    url: str
    pid: int
    proc: subprocess.Popen | None = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop this simulator by pid (never by name) and reap it."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


def spawn_metadata(cloud: str, workdir: Path, host: str = "127.0.0.1", port: int = 0,
                   name: str | None = None, extra: list[str] | None = None, timeout: float = 15.0) -> SimProcess:
    """Start ``spot-migration sim metadata`` as a process and wait until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"metadata-{cloud}-{name or 'node'}-{os.getpid()}-{time.monotonic_ns()}.json"
    log = open(workdir / f"metadata-{cloud}-{name or 'node'}.log", "ab")
    cmd = [sys.executable, "-m", "spot_migration.cli", "sim", "metadata", "--cloud", cloud, "--host", host,
           "--port", str(port), "--ready-file", str(ready)]
    if name:
        cmd += ["--name", name]
    cmd += extra or []
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready.exists():
            info = json.loads(ready.read_text())
            ready.unlink()
            return SimProcess(cloud, info["url"], proc.pid, proc)
        if proc.poll() is not None:
            raise SimulatorError(f"metadata simulator ({cloud}) exited with {proc.returncode}; "
                                 f"see {workdir}/metadata-{cloud}-{name or 'node'}.log")
        time.sleep(0.05)
    SimProcess(cloud, "", proc.pid, proc).stop()
    raise SimulatorError(f"metadata simulator ({cloud}) did not start within {timeout} s")
