"""[K] 4: one reservation store by default. ``deploy``, ``migrate`` and the watcher resolve the same file (the
watcher's ``<state_dir>/reservations.json``, state_dir ``${XDG_STATE_HOME:-~/.local/state}/spot-migration``), so a
deploy and a migration can never promise one GPU twice; rendered by Ansible from the installed collection's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spot_migration import collections_path

COLLECTION = Path(collections_path()) / "ansible_collections" / "spot" / "migration"


@pytest.mark.parametrize("xdg", [None, "xdg-state"])
def test_deploy_migrate_and_the_watcher_share_one_reservation_file(run_playbook, tmp_path, xdg):
    env = {"HOME": str(tmp_path / "home")}
    if xdg:
        env["XDG_STATE_HOME"] = str(tmp_path / xdg)
    deploy_plays = yaml.safe_load((COLLECTION / "playbooks" / "deploy.yml").read_text())
    [choose] = [p for p in deploy_plays if p["name"] == "Choose a node"]
    [start] = [p for p in deploy_plays if p["name"] == "Start the workload"]
    assert start["vars"] == choose["vars"], "the reserving and the releasing play read the same file"
    playbook = tmp_path / "defaults.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Render the defaults", "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(COLLECTION / "roles" / "migrate" / "defaults" / "main.yml")], "vars": choose["vars"],
        "tasks": [{"name": "Write them down", "ansible.builtin.copy": {
            "dest": str(tmp_path / "paths.json"), "mode": "0600",
            "content": "{{ {'migrate': migrate_variables.reservation_file | trim,"
                       " 'deploy': deploy_reservation_file | trim} | to_json }}"}}]}]))
    result = run_playbook(playbook, env=env, args=["-e", f"ansible_python_interpreter={sys.executable}"])
    assert result.returncode == 0, result.stdout[-3000:]
    paths = json.loads((tmp_path / "paths.json").read_text())
    watcher = subprocess.run([sys.executable, "-c", "from spot_migration.watch.config import DEFAULT_STATE_DIR; "
                              "print(DEFAULT_STATE_DIR / 'reservations.json')"],
                             env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    expected = str(Path(env.get("XDG_STATE_HOME") or Path(env["HOME"]) / ".local" / "state") / "spot-migration"
                   / "reservations.json")
    assert paths == {"migrate": expected, "deploy": expected} and watcher == expected, (paths, watcher)
