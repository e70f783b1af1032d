"""Shared fixtures: the collection importable as ansible_collections.spot.migration,
metadata simulators (stopped in teardown, even on failure) and a playbook runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# The tests run the working tree as the collection (make setup links it under .collections/).
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".collections"))

from spot_migration import collections_path  # noqa: E402

COLLECTIONS = collections_path()
sys.path.insert(0, str(COLLECTIONS))

from spot_migration.sim.metadata import start_in_thread  # noqa: E402


@pytest.fixture
def metadata_sim():
    """Factory: ``metadata_sim('aws', v2_only=True)`` -> a running simulator (shut down after the test)."""
    servers = []

    def start(cloud: str, **kwargs):
        server = start_in_thread(cloud, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture(scope="session")
def ansible_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("ansible-home")
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    return env


@pytest.fixture
def run_playbook(ansible_env, tmp_path):
    """Run ``ansible-playbook`` for real; returns the CompletedProcess (stdout + stderr merged)."""

    def run(playbook: str | Path, inventory: dict | None = None, extra_vars: dict | None = None,
            args: list[str] | None = None, timeout: float = 240, env: dict | None = None):
        cmd = [str(Path(sys.executable).parent / "ansible-playbook")]
        if inventory is not None:
            inv = tmp_path / "inventory.json"
            inv.write_text(json.dumps(inventory))
            cmd += ["-i", str(inv)]
        else:
            cmd += ["-i", "localhost,", "-c", "local"]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        cmd += (args or []) + [str(playbook)]
        return subprocess.run(cmd, env=dict(ansible_env, **(env or {})), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=tmp_path, check=False)

    return run
