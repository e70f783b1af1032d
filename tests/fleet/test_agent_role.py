"""Role spot.migration.eviction_agent through its molecule scenario, on a small fleet of its own; and the
role's check mode and removal leave nothing running."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from spot_migration import fleet as fleet_mod
from tests.helpers.fleet import worker_base

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rolefleet")
    fleet = fleet_mod.up(directory, nodes=2, standby=0, base_address=worker_base(150), image=False, log=lambda *_: None)
    try:
        yield fleet
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


def test_molecule_scenario(small_fleet, ansible_env, tmp_path):
    control_dir = tempfile.mkdtemp(prefix="mol-cp-")  # SSH control sockets need a short path
    env = dict(ansible_env, SPOT_FLEET_INVENTORY=str(small_fleet.inventory_path), SPOT_AGENT_SECRET=secrets.token_hex(32),
               MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"), HOME=str(tmp_path),
               ANSIBLE_SSH_CONTROL_PATH_DIR=control_dir)
    try:
        result = subprocess.run([str(Path(sys.executable).parent / "molecule"), "test", "--scenario-name", "default"],
                                cwd=ROOT / "roles" / "eviction_agent", env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-8000:]
    for step in ("converge", "idempotence", "verify", "cleanup"):
        assert f"[default > {step}] Executed: Successful" in result.stdout, step
    for node in small_fleet.nodes:
        assert fleet_mod.agent_pids(node) == []
        assert not (Path(node.paths["state"]) / "eviction-agent").exists()
    assert env["SPOT_AGENT_SECRET"] not in result.stdout
