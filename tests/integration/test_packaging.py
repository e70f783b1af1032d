"""What a user sees of the collection without running it: module docs render with ansible-doc, role argument specs
cover every variable the roles read, the execution environment definition is valid for ansible-builder (create and
introspect, no image build), the AWX setup playbook parses with the real awx.awx, and the event source's docs parse."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if not p.stem.startswith("_"))


def run(cmd: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=240, check=False)


def test_every_module_documents_itself_with_ansible_doc(ansible_env):
    # Standard output alone: whatever warnings the libraries print (cryptography 51 warns about DSA on import) go to
    # standard error and are no part of the JSON.
    result = subprocess.run([str(BIN / "ansible-doc"), "--json", *[f"spot.migration.{m}" for m in MODULES]],
                            env=ansible_env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    docs = json.loads(result.stdout)
    assert sorted(docs) == [f"spot.migration.{m}" for m in MODULES]
    for name, doc in docs.items():
        assert doc["doc"]["short_description"] and doc["doc"]["options"], name
        assert doc["examples"].strip() and doc["return"], name
        for option, spec in doc["doc"]["options"].items():
            assert spec.get("description"), f"{name}: option {option} has no description"


@pytest.mark.parametrize("role", ["eviction_agent", "migrate"])
def test_roles_render_and_their_argument_specs_cover_every_variable(role, ansible_env):
    result = run([str(BIN / "ansible-doc"), "-t", "role", "--json", f"spot.migration.{role}"], ansible_env)
    assert result.returncode == 0, result.stdout[-3000:]
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    documented = {name for entry in specs.values() for name in entry["options"]}
    for entry in specs.values():
        for option, spec in entry["options"].items():
            assert spec.get("description") and spec.get("type"), f"{role}: {option}"
    defaults = (ROOT / "roles" / role / "defaults" / "main.yml").read_text()
    if role == "eviction_agent":
        read = set(yaml.safe_load(defaults))  # the role's own variables
    else:
        # The migrate role reads the playbook's variables through its defaults: "{{ transfer | default(...) }}".
        read = set(re.findall(r"\(?\s*(\w+)\s*\|\s*(?:default|split)", defaults))
    assert read and read <= documented, f"{role}: not in meta/argument_specs.yml: {sorted(read - documented)}"


def test_execution_environment_definition_creates_a_build_context(ansible_env, tmp_path):
    context = tmp_path / "context"
    result = run([str(BIN / "ansible-builder"), "create", "-f", str(ROOT / "execution-environment.yml"), "-c",
                  str(context)], ansible_env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    containerfile = (context / "Containerfile").read_text()
    assert "ansible-galaxy collection install" in containerfile and "install-from-bindep" in containerfile
    build = context / "_build"
    python = (build / "requirements.txt").read_text()
    for package in ("ansible-runner", "httpx", "aiohttp", "prometheus-client"):
        assert package in python, package
    assert "rsync" in (build / "bindep.txt").read_text()
    galaxy = yaml.safe_load((build / "requirements.yml").read_text())["collections"]
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    assert {"name": f"collections/spot-migration-{version}.tar.gz", "type": "file"} in galaxy
    assert any(c["name"] == "awx.awx" for c in galaxy)


def test_collection_tells_ansible_builder_what_it_needs(ansible_env):
    collections = Path(ansible_env["ANSIBLE_COLLECTIONS_PATH"])
    result = run([str(BIN / "ansible-builder"), "introspect", "--sanitize", str(collections)], ansible_env)
    assert result.returncode == 0, result.stdout[-3000:]
    ours = [line for line in result.stdout.splitlines() if "from collection spot.migration" in line]
    assert any("aiohttp" in line for line in ours) and any("rsync" in line for line in ours), result.stdout


def test_controller_setup_parses_with_awx_awx(ansible_env):
    result = run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", "spot.migration.controller_setup"],
                 ansible_env)
    assert result.returncode == 0, result.stdout[-3000:]
    text = (ROOT / "playbooks" / "controller_setup.yml").read_text()
    for module in ("awx.awx.project", "awx.awx.inventory_source", "awx.awx.job_template", "awx.awx.schedule"):
        assert f"{module}:" in text
    # The migrate job template must accept the watcher's extra variables, or every launch has ignored_fields.
    play = yaml.safe_load(text)[0]
    migrate = next(t for t in play["tasks"] if t.get("awx.awx.job_template", {}).get("playbook") == "playbooks/migrate.yml")
    assert migrate["awx.awx.job_template"]["ask_variables_on_launch"] is True
    survey = {q["variable"] for q in migrate["awx.awx.job_template"]["survey_spec"]["spec"]}
    assert survey == {"source", "workloads", "transfer"}


def test_event_source_documentation_parses():
    source = (ROOT / "extensions" / "eda" / "plugins" / "event_source" / "eviction_notices.py").read_text()
    module = ast.parse(source)
    strings = {n.targets[0].id: n.value.value for n in module.body if isinstance(n, ast.Assign)
               and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)}
    doc = yaml.safe_load(strings["DOCUMENTATION"])
    assert set(doc["options"]) == {"host", "port", "secret_file", "secret_env", "max_skew", "heartbeats"}
    examples = yaml.safe_load(strings["EXAMPLES"])
    assert "spot.migration.eviction_notices" in examples[0]["sources"][0]
    extensions = yaml.safe_load((ROOT / "meta" / "extensions.yml").read_text())
    assert {"args": {"ext_dir": "eda/plugins/event_source"}} in extensions["extensions"]


@pytest.mark.parametrize("variables, message", [
    ({"eviction_agent_log_format": "xml"}, "value of eviction_agent_log_format must be one of: text, json, got: xml"),
    ({"eviction_agent_poll_interval": "fast"}, "eviction_agent_poll_interval"),
    ({"eviction_agent_signal_workloads": "perhaps"}, "eviction_agent_signal_workloads"),
])
def test_the_agent_roles_variables_are_checked_before_anything_runs(variables, message, ansible_env, tmp_path):
    """The role's argument spec refuses a bad variable by name, at its first task (nothing installed)."""
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [{
        "role": "spot.migration.eviction_agent", "eviction_agent_watcher_url": "http://127.0.0.1:9",
        "eviction_agent_secret": "s" * 32, "eviction_agent_dir": str(tmp_path / "agent"), **variables}]}]
    path = tmp_path / "play.json"
    path.write_text(json.dumps(play))
    result = run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(path)], ansible_env)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]
    assert "Validating arguments against arg spec" in result.stdout
    assert not (tmp_path / "agent").exists()
