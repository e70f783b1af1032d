"""Installed the way users install it: the collection from its built tarball (ansible-galaxy collection install) and
the controller from its built wheel (pip install), into a fresh virtualenv and a fresh collections path, nothing
from the checkout on any path. A real migration on a local fleet, from those installed copies only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.fleet import free_port, wait_for, worker_base

ROOT = Path(__file__).resolve().parents[2]
VERSION = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]

pytestmark = pytest.mark.slow


def run(cmd, env, timeout=600, check=True, cwd=None):
    result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, cmd))}: rc {result.returncode}\n{result.stdout[-6000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(env, bin dir, collections path) of a fresh venv with the wheel and a fresh path with the tarball."""
    base = tmp_path_factory.mktemp("install")
    dist = base / "dist"
    host_env = dict(os.environ)
    host_env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    # The two artifacts, built the standard way from a copy of the tracked tree (the checkout's .venv, .collections
    # and build outputs stay out of it).
    tree = base / "tree"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, tree], host_env)
    run([Path(sys.executable).parent / "ansible-galaxy", "collection", "build", "--output-path", dist, tree], host_env)
    wheel = next(dist.glob("spot_migration-*.whl"))
    tarball = dist / f"spot-migration-{VERSION}.tar.gz"
    assert wheel.name.startswith(f"spot_migration-{VERSION}-"), wheel.name
    names = subprocess.run(["tar", "tzf", tarball], capture_output=True, text=True, check=True).stdout.split()
    assert not [n for n in names if n.startswith(("src/", "tests/", "bench/", ".venv", ".collections"))], names[:20]

    venv = base / "venv"
    run(["python3", "-m", "venv", venv], host_env)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], host_env)
    collections = base / "collections"
    bindir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HOME": str(base / "home"),
                "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1"})
    run([bindir / "ansible-galaxy", "collection", "install", "--offline", "--no-deps", "-p", collections, tarball], env)
    # Nothing of the checkout is importable in there.
    probe = run([bindir / "python", "-c", "import spot_migration, sys; print(spot_migration.__file__)"], env, cwd=base)
    assert str(venv) in probe.stdout and str(ROOT) not in probe.stdout, probe.stdout
    return env, bindir, collections, base


def test_python_m_and_the_version(installed):
    env, bindir, _collections, base = installed
    out = run([bindir / "python", "-m", "spot_migration", "--version"], env, cwd=base).stdout
    assert out.strip() == f"spot-migration, version {VERSION}"
    # The package's data came with the wheel: podman's settings for the local fleet, the configuration's schema.
    run([bindir / "python", "-c", "from spot_migration import fleet; from spot_migration.watch import config; "
         "assert fleet.CONTAINERS_CONF.is_file() and config.schema()['properties']"], env, cwd=base)
    # The demo's plot is an extra: the plain wheel does not pull matplotlib.
    assert run([bindir / "python", "-c", "import matplotlib"], env, check=False, cwd=base).returncode != 0


def test_a_missing_or_mismatched_collection_is_named(installed, tmp_path):
    env, bindir, collections, base = installed
    (tmp_path / "inv.yml").write_text("all: {}\n")
    cmd = [bindir / "spot-migration", "watch", "-i", tmp_path / "inv.yml", "--state-dir", tmp_path / "state"]
    missing = run(cmd, dict(env, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "empty"), SPOT_MIGRATION_SECRET="x" * 32),
                  check=False, timeout=60, cwd=base)
    assert missing.returncode == 1 and "Traceback" not in missing.stdout, missing.stdout
    assert "the collection spot.migration is not installed where Ansible looks" in missing.stdout
    assert str(tmp_path / "empty") in missing.stdout
    other = tmp_path / "other"
    shutil.copytree(collections, other, symlinks=True)
    manifest = other / "ansible_collections" / "spot" / "migration" / "MANIFEST.json"
    data = json.loads(manifest.read_text())
    data["collection_info"]["version"] = "0.9.0"
    manifest.write_text(json.dumps(data))
    mismatched = run(cmd, dict(env, ANSIBLE_COLLECTIONS_PATH=str(other), SPOT_MIGRATION_SECRET="x" * 32), check=False,
                     timeout=60, cwd=base)
    assert mismatched.returncode == 1 and "Traceback" not in mismatched.stdout, mismatched.stdout
    assert f"is version 0.9.0, this controller (spot-migration {VERSION}) needs {VERSION}" in mismatched.stdout


def test_a_real_migration_from_the_installed_copies(installed, tmp_path):
    env, bindir, collections, base = installed
    cli = bindir / "spot-migration"
    fleet_dir = tmp_path / "fleet"
    run([cli, "fleet", "up", "--dir", fleet_dir, "--nodes", "3", "--standby", "1", "--no-image", "--base-address",
         worker_base(60)], env, cwd=base)
    watcher = None
    try:
        rows = json.loads(run([cli, "fleet", "status", "--dir", fleet_dir, "--json"], env, cwd=base).stdout)
        assert [r["name"] for r in rows] == ["node1", "node2", "standby1"] and all(r["sshd"] for r in rows), rows
        inventory = fleet_dir / "inventory.yml"
        ckpt = "{{ spot_checkpoint_root }}/installed"
        workload = {"name": "installed", "runtime": "process", "checkpoint_dir": ckpt,
                    "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
                    "args": ["--checkpoint-dir", ckpt, "--step-time", "0.01", "--every", "40"],
                    "workload_root": "{{ spot_workload_root }}", "gpus": 1}
        state = tmp_path / "state"
        run([bindir / "ansible-playbook", "-i", inventory, "spot.migration.deploy", "-e",
             json.dumps({"workload": workload, "target": "node1",
                         "spot_reservation_file": str(state / "reservations.json")})], env, cwd=base)
        port = free_port()
        config = tmp_path / "watch.yml"
        config.write_text(yaml.safe_dump({
            "inventory": str(inventory), "listen": f"127.0.0.1:{port}", "state_dir": str(state),
            "sweep": {"hosts": "all", "interval": 2}, "replication": {"enabled": False}, "lost": {"enabled": False},
            "log_format": "json"}))
        with open(tmp_path / "watch.log", "w") as log:
            watcher = subprocess.Popen([bindir / "python", "-m", "spot_migration", "watch", "--config", config],
                                       env=dict(env, SPOT_MIGRATION_SECRET="s" * 32), stdout=log,
                                       stderr=subprocess.STDOUT, cwd=base)
        run([cli, "fleet", "inject", "--dir", fleet_dir, "--node", "node1", "--notice", "spot_interruption"], env,
            cwd=base)

        def moved():
            out = run([cli, "history", "--state-dir", state, "--json"], env, check=False, cwd=base)
            rows = json.loads(out.stdout)["migrations"] if out.returncode == 0 and out.stdout.strip() else []
            return next((m for m in rows if m.get("state") in ("running", "failed")), None)

        try:
            migration = wait_for(moved, 180, "the migration to finish", interval=1.0)
        except AssertionError:
            raise AssertionError((tmp_path / "watch.log").read_text()[-6000:]) from None
        assert migration["state"] == "running", (migration, (tmp_path / "watch.log").read_text()[-6000:])
        # The watcher ran the installed collection, not a checkout: every run's playbook came from there.

        def log_lines():
            return [json.loads(line) for line in (tmp_path / "watch.log").read_text().splitlines() if line.startswith("{")]

        wait_for(lambda: any("installed -> standby1 (running again" in line["message"] for line in log_lines()), 30,
                 "the watcher to say where the workload runs now")
        assert all({"time", "level", "message"} <= set(line) for line in log_lines())
        status = json.loads(run([cli, "status", "--state-dir", state, "-i", inventory, "--json"], env, cwd=base).stdout)
        assert status, status
    finally:
        if watcher is not None:
            watcher.send_signal(signal.SIGTERM)
            try:
                watcher.wait(60)
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.wait()
        run([cli, "fleet", "down", "--dir", fleet_dir], env, check=False, cwd=base)
        time.sleep(0.1)
