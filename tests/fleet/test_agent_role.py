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


def _molecule(env, tmp_path, *args):
    control_dir = tempfile.mkdtemp(prefix="mol-cp-")  # SSH control sockets need a short path
    env = dict(env, MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"), HOME=str(tmp_path),
               ANSIBLE_SSH_CONTROL_PATH_DIR=control_dir, SPOT_FLEET_BASE_ADDRESS=worker_base(140))
    try:
        return subprocess.run([str(Path(sys.executable).parent / "molecule"), *args, "--scenario-name", "default"],
                              cwd=ROOT / "roles" / "eviction_agent", env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)


def test_molecule_scenario_creates_and_destroys_its_own_fleet(ansible_env, tmp_path):
    secret = secrets.token_hex(32)
    result = _molecule(dict(ansible_env, SPOT_AGENT_SECRET=secret), tmp_path, "test")
    fleet_dir = tmp_path / "molecule" / "fleet"
    if result.returncode != 0 and fleet_dir.exists():
        fleet_mod.down(fleet_dir, log=lambda *_: None)  # never leave its sshd processes behind
    assert result.returncode == 0, result.stdout[-8000:]
    for step in ("create", "converge", "idempotence", "verify", "cleanup", "destroy"):
        assert f"[default > {step}] Executed: Successful" in result.stdout, step
    assert "node1" in result.stdout and "node2" in result.stdout  # the role ran on the fleet's nodes
    assert not fleet_dir.exists()
    alive = subprocess.run(["pgrep", "-f", str(fleet_dir)], capture_output=True, text=True, check=False).stdout
    assert not alive.strip(), alive
    assert secret not in result.stdout


def test_molecule_says_what_is_missing(ansible_env, tmp_path):
    """Without the controller package on PATH the scenario stops in create, naming it (no traceback, no fleet)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in Path(sys.executable).parent.glob("ansible*"):
        (bindir / tool.name).symlink_to(tool)
    (bindir / "python3").symlink_to(sys.executable)
    env = dict(ansible_env, PATH=f"{bindir}:/usr/bin:/bin", SPOT_AGENT_SECRET=secrets.token_hex(32))
    result = _molecule(env, tmp_path, "create")
    assert result.returncode != 0
    assert "spot-migration, the controller package, and it is not on PATH" in result.stdout, result.stdout[-4000:]
    assert not (tmp_path / "molecule" / "fleet" / "fleet.json").exists()
