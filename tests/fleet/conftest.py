"""A local fleet shared by the tests of one pytest worker, brought down by pid at the end, even on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spot_migration import fleet as fleet_mod

ROOT = Path(__file__).resolve().parents[2]


def worker_base(offset: int = 0) -> str:
    """Each xdist worker gets its own block of loopback addresses."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return f"127.0.{10 + index}.{10 + offset}"


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fleet")
    up = fleet_mod.up(directory, nodes=4, base_address=worker_base(), log=lambda *_: None)
    try:
        yield up
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


@pytest.fixture(scope="session")
def inventory(fleet) -> dict:
    return yaml.safe_load(fleet.inventory_path.read_text())


@pytest.fixture
def fleet_play(fleet, ansible_env, tmp_path):
    """Run a play (a list of tasks, or a whole play dict) against the fleet over SSH."""

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
