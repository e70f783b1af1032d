"""The lean run of a module (plugin_utils/_lean.py): the bytes the action plugin sends, run here the way the node runs
them (``python -I -S``, the bootstrap and payload on standard input), on every target Python there is."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import httpx
import pytest

from ansible_collections.spot.migration.plugins.module_utils._metadata import EVICTION_INFO_SPEC
from ansible_collections.spot.migration.plugins.plugin_utils import _lean

ENTRY = ("_http", "eviction_info")


def params(**given):
    out = {k: v.get("default") for k, v in EVICTION_INFO_SPEC["argument_spec"].items()}
    out.update(given)
    return out


def pythons() -> list[str]:
    found = ["/usr/bin/python3"] if os.access("/usr/bin/python3", os.X_OK) else [sys.executable]
    for version in ("3.8", "3.13"):
        found += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))[-1:]
    return found


def run(interpreter: str, entry=ENTRY, **given) -> dict:
    done = subprocess.run(_lean.lean_argv([interpreter]), input=_lean.lean_input(entry, params(**given)),
                          capture_output=True, timeout=60, check=False, env={"PYTHONPATH": "/nonexistent"})
    return _lean.lean_result("spot.migration.eviction_info", done.returncode, done.stdout.decode(),
                             done.stderr.decode())


def test_the_sources_are_ours_every_import_included_dependencies_first():
    names = [name for name, _source in _lean.sources_for("_http")]
    assert names == ["_notice", "_metadata", "_http"]
    # fail_on_exception imports five module_utils inside a function: they come too, each after what it imports.
    names = [name for name, _source in _lean.sources_for("_common")]
    assert {"_checkpoint", "_gpu", "_notice", "_placement", "_workload", "_common"} <= set(names)
    for name, source in _lean.sources_for("_common"):
        for dep in _lean._TOP_IMPORT.findall(source):
            assert names.index(dep) < names.index(name), (dep, name)


@pytest.mark.parametrize("interpreter", pythons())
def test_a_notice_read_lean_is_the_modules_result(metadata_sim, interpreter):
    sim = metadata_sim("aws")
    httpx.post(sim.url + "/_sim/notice", json={"kind": "spot_interruption"})
    result = run(interpreter, provider="aws", metadata_url=sim.url)
    assert result["changed"] is False and "failed" not in result, result
    assert result["evicting"] is True and result["kind"] == "spot_interruption"
    assert result["notice_id"].startswith("aws-") and result["error"] is None
    assert not [k for k in result if k in ("invocation", "exception")]


@pytest.mark.parametrize("interpreter", pythons()[:1])
def test_our_errors_fail_with_their_message_and_nothing_else_does_without_its_traceback(interpreter):
    refused = run(interpreter, provider="gcp", metadata_url="http://127.0.0.1:9", timeout=1.0)
    assert refused["failed"] is True and "metadata service unreachable" in refused["msg"], refused
    assert "http://127.0.0.1:9" in refused["msg"] and "exception" not in refused
    blind = run(interpreter, provider="gcp", metadata_url="http://127.0.0.1:9", timeout=1.0, fail_on_error=False)
    assert "failed" not in blind and blind["evicting"] is False and "unreachable" in blind["error"]
    crashed = run(interpreter, provider="gcp", metadata_url="http://127.0.0.1:9", timeout="soon")
    assert crashed["failed"] is True and "Traceback" in crashed["exception"], crashed


def test_a_node_that_cannot_run_it_is_a_failure_naming_rc_and_output():
    result = _lean.lean_result("spot.migration.eviction_info", 127, "", "/usr/bin/python9: not found")
    assert result["failed"] is True and result["rc"] == 127 and "not found" in result["module_stderr"]
    assert "spot_lean_modules=false" in result["msg"]
    garbled = _lean.lean_result("spot.migration.eviction_info", 0, "Welcome!\n{", "")
    assert garbled["failed"] is True and garbled["module_stdout"] == "Welcome!\n{"


def test_the_stdlib_node_runs_argv_lists_in_the_c_locale_and_finds_sbin_tools(monkeypatch):
    from ansible_collections.spot.migration.plugins.module_utils._common import SpotMigrationError, stdlib_node

    node = stdlib_node(check_mode=True)
    assert node.check_mode is True
    rc, out, err = node.run(["sh", "-c", 'echo "$LC_ALL $1"; read line; echo "got $line"', "sh", "a b; rm -rf /"],
                            data="input")
    assert (rc, out, err) == (0, "C a b; rm -rf /\ngot input\n", "")
    assert node.run(["sh", "-c", "cat"])[1] == "", "standard input is closed unless data is given"
    assert node.run(["sh", "-c", "echo no >&2; exit 3"]) == (3, "", "no\n")
    with pytest.raises(SpotMigrationError, match="no-such-tool-here could not be run"):
        node.run(["no-such-tool-here"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert node.which("sh") is None or node.which("sh").startswith(("/sbin", "/usr/sbin", "/usr/local/sbin"))
    if os.path.exists("/usr/sbin/sshd"):
        assert node.which("sshd") in ("/sbin/sshd", "/usr/sbin/sshd")  # /sbin may be a link to /usr/sbin
    node.warn("careful")
    assert node.warnings == ["careful"]


@pytest.mark.parametrize("interpreter", pythons())
def test_a_migration_step_runs_lean_and_reports_what_it_could_not_read(interpreter, tmp_path):
    # describe on a node without GPUs (no nvidia-smi on the PATH): blind, with the reason, never free.
    done = subprocess.run(_lean.lean_argv([interpreter]), capture_output=True, timeout=60, check=False,
                          env={"PATH": str(tmp_path)},
                          input=_lean.lean_input(("_steps", "lean_target_step"), {
                              "step": "describe", "target": "n1", "lifecycle": "spot", "list_images": True,
                              "check_notice": False, "container_cli": None, "provider": "auto",
                              "metadata_url": None}))
    result = _lean.lean_result("spot.migration.migration_target", done.returncode, done.stdout.decode(),
                               done.stderr.decode())
    assert "failed" not in result, result
    candidate = result["candidate"]
    assert candidate["host"] == "n1" and candidate["blind"] is True and "GPUs unreadable" in candidate["error"]
    assert candidate["free_gpus"] == [] and candidate["images"] is None


def test_sets_and_bytes_in_a_result_come_back_as_a_module_would_return_them(tmp_path, monkeypatch):
    # A result holding a set or bytes (jsonify in AnsibleModule turns them into a list and text) is not a crash.
    source = "def entry(params, check_mode):\n    return {'hosts': {'b', 'a'}, 'raw': b'x', 'n': params['n']}\n"
    monkeypatch.setitem(_lean._SOURCES, "_lean_probe_entry", source)
    done = subprocess.run(_lean.lean_argv([pythons()[0]]), capture_output=True, timeout=60, check=False,
                          input=_lean.lean_input(("_lean_probe_entry", "entry"), {"n": 3}))
    result = _lean.lean_result("x", done.returncode, done.stdout.decode(), done.stderr.decode())
    assert result == {"hosts": ["a", "b"], "raw": "x", "n": 3, "changed": False}
