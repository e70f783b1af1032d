"""Helpers for tests on a local fleet: addresses per xdist worker, running plays, deploying and finding
workloads, a webhook receiver."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from spot_migration import fleet as fleet_mod


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def own_fleet(directory: Path, **options):
    """A fleet of a test module's own (no container image), taken down by pid whatever happens."""
    fleet = fleet_mod.up(directory, image=False, log=lambda *_: None, **options)
    try:
        yield fleet
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


def secret_file(directory: Path) -> Path:
    """The agents' and the watcher's shared HMAC key: 32 random bytes, hex, in a 0600 file."""
    path = Path(directory) / "secret"
    path.write_text(os.urandom(32).hex())
    path.chmod(0o600)
    return path


def ansible_environ(ansible_env: dict) -> None:
    """The watcher runs playbooks with this process's environment: give it the tests' ANSIBLE_* and PATH (module-
    scoped fixtures, where monkeypatch is not available; every fleet test sets the same values)."""
    os.environ.update({k: v for k, v in ansible_env.items() if k.startswith("ANSIBLE_") or k == "PATH"})


def install_agents(play, url: str, secret: Path, hosts: str = "spot") -> None:
    """The eviction agent role on ``hosts``, reporting to ``url`` with ``secret``, as a background process."""
    play({"hosts": hosts, "gather_facts": False, "roles": [{
        "role": "spot.migration.eviction_agent", "eviction_agent_watcher_url": url,
        "eviction_agent_secret": secret.read_text(), "eviction_agent_runtimes": ["process"],
        "eviction_agent_service_manager": "background"}]})


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something true (returned) or fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def worker_base(offset: int = 0) -> str:
    """Each xdist worker gets its own block of loopback addresses."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return f"127.0.{10 + index}.{10 + offset}"


def play_runner(fleet, ansible_env, tmp_path):
    """Run a play (a list of tasks, or a whole play dict) against ``fleet`` over SSH."""

    def run(tasks, hosts="node1", extra_vars=None, args=None, check=True):
        play = tasks if isinstance(tasks, dict) else {"hosts": hosts, "gather_facts": False, "tasks": tasks}
        path = tmp_path / f"play-{len(list(tmp_path.glob('play-*')))}.json"
        path.write_text(json.dumps([play]))
        cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(fleet.inventory_path), str(path)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        result = subprocess.run(cmd + (args or []), env=ansible_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=300, check=False)
        if check:
            assert result.returncode == 0, result.stdout[-6000:]
        return result

    return run


@contextmanager
def webhook_server():
    """(url, received payloads) of a webhook receiver, shut down on exit."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


class Migrations:
    """Deploy workloads, run migrate, look at the result; removes every workload it made, on every node."""

    def __init__(self, fleet, fleet_play, ansible_env, tmp_path):
        self.fleet, self.play, self.env, self.tmp = fleet, fleet_play, ansible_env, tmp_path
        self.names: list[str] = []
        self.records = tmp_path / "records"
        self.reservations = tmp_path / "reservations.json"

    def deploy(self, node: str, name: str, runtime: str = "process", gpus: int = 1, extra: list[str] | None = None):
        self.names.append(name)
        n = self.fleet.node(node)
        ck = os.path.join(n.paths["checkpoints"], name)
        args = ["--checkpoint-dir", ck, "--step-time", "0.01", "--progress", os.path.join(ck, "progress.json")]
        args += (extra or ["--every", "40"])
        spec = {"name": name, "runtime": runtime, "args": args, "checkpoint_dir": ck,
                "workload_root": "{{ spot_workload_root }}", "gpus": gpus}
        if runtime == "process":
            spec["command"] = ["{{ ansible_python_interpreter }}", self.fleet.trainer]
        else:
            spec["image"] = self.fleet.image
        self.play([{"spot.migration.workload": spec},
                   {"spot.migration.checkpoint_info": {"path": ck, "wait_timeout": 20}}], hosts=node)

    def migrate(self, source: str, *extra: str, check: bool = True, background: bool = False):
        cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(self.fleet.inventory_path),
               "spot.migration.migrate", "-e", f"source={source}", "-e", f"spot_record_dir={self.records}",
               "-e", f"spot_reservation_file={self.reservations}", *extra]
        if background:
            return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        result = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=300, check=False)
        if check:
            assert result.returncode == 0, result.stdout[-8000:]
        return result

    def where(self, name: str) -> dict[str, bool]:
        """{node: running} for every node that has the workload."""
        found = {}
        for node in self.fleet.nodes:
            spec_dir = Path(node.paths["workloads"]) / name
            if (spec_dir / "spec.json").exists():
                info = json.loads((spec_dir / "workload.pid").read_text()) if (spec_dir / "workload.pid").exists() else {}
                found[node.name] = bool(info) and fleet_mod._alive(info["pid"], info.get("start_ticks"))
            storage = Path(node.root) / "containers"
            if storage.exists():
                out = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True,
                                     env=dict(os.environ, **self.fleet.container_env(node)), check=False).stdout
                if name in out.split():
                    found[node.name] = True
        return found

    def records_written(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.records.glob("*.json"))]

    def cleanup(self):
        for name in self.names:
            for runtime in ("process", "podman"):
                absent = {"name": name, "runtime": runtime, "state": "absent",
                          "workload_root": "{{ spot_workload_root }}", "stop_timeout": 5}
                self.play({"hosts": "all", "gather_facts": False, "tasks": [{"spot.migration.workload": absent}]},
                          check=False)
