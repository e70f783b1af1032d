"""The workload module on fleet nodes, over SSH, for the process and podman runtimes (and docker's code
path through podman's compatible CLI): lifecycle with a real resume, idempotence, a workload that ignores
the signal, and hostile names and arguments passed as data."""

from __future__ import annotations

import json
import os
import time

import pytest

RUNTIMES = ["process", "podman", "docker"]


def spec(fleet, runtime: str, name: str, extra_args: list[str] | None = None, **more) -> dict:
    node = fleet.node("node1")
    ck = os.path.join(node.paths["checkpoints"], name)
    args = ["--checkpoint-dir", ck, "--step-time", "0.01", "--every", "100", "--keep", "100",
            "--progress", os.path.join(ck, "progress.json")] + (extra_args or [])
    base = {"name": name, "runtime": runtime, "checkpoint_dir": ck, "workload_root": node.paths["workloads"],
            "args": args}
    if runtime == "process":
        base["command"] = ["{{ ansible_python_interpreter }}", fleet.trainer]
    else:
        base["image"] = fleet.image
        if runtime == "docker":
            base["container_cli"] = "/usr/bin/podman"  # docker's code path, podman's compatible CLI
    base.update(more)
    return base


def progress(fleet, name: str) -> dict:
    path = os.path.join(fleet.node("node1").paths["checkpoints"], name, "progress.json")
    with open(path) as handle:
        return json.load(handle)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_lifecycle_with_real_resume(fleet, fleet_play, runtime):
    name = f"life-{runtime}"
    s = spec(fleet, runtime, name)
    ident = {k: s[k] for k in ("name", "runtime", "workload_root") if k in s}
    if "container_cli" in s:
        ident["container_cli"] = s["container_cli"]
    fleet_play([
        {"name": "start (check)", "spot.migration.workload": s, "check_mode": True, "register": "c1"},
        {"name": "start", "spot.migration.workload": s, "register": "c2"},
        {"name": "start (check again)", "spot.migration.workload": s, "check_mode": True, "register": "c3"},
        {"name": "start again", "spot.migration.workload": s, "register": "c4"},
        {"ansible.builtin.assert": {"that": ["c1 is changed", "c2 is changed", "c3 is not changed", "c4 is not changed",
                                             "c2.workload.running"]}},
        {"ansible.builtin.pause": {"seconds": 1}},
        {"spot.migration.workload": dict(ident, state="checkpointed", deadline=15), "register": "ck"},
        {"ansible.builtin.assert": {"that": ["ck is changed", "ck.checkpoint.format == 'safetensors'",
                                             "ck.checkpoint.step > 0", "ck.checkpoint.signal == 'SIGUSR1'",
                                             "ck.checkpoint.mtime >= ck.checkpoint.signalled_at"]}},
        {"spot.migration.workload": dict(ident, state="stopped", stop_timeout=10), "register": "st"},
        {"spot.migration.workload": dict(ident, state="stopped"), "register": "st2"},
        {"ansible.builtin.assert": {"that": ["st is changed", "st.stopped_by == 'SIGTERM'", "st2 is not changed"]}},
        {"spot.migration.workload": dict(s, resume_from="{{ ck.checkpoint.checkpoint }}"), "register": "resumed"},
        {"ansible.builtin.pause": {"seconds": 1}},
        {"spot.migration.workload_info": {"workload_root": s["workload_root"], "name": name}, "register": "info"},
        {"ansible.builtin.assert": {"that": ["info.workloads | length == 1", "info.workloads[0].running",
                                             "info.workloads[0].spec.resume_from == ck.checkpoint.checkpoint"]}},
        {"ansible.builtin.copy": {"content": "{{ ck.checkpoint.step }}", "dest": "{{ spot_node_root }}/state/" + name}},
    ])
    step = int(open(os.path.join(fleet.node("node1").root, "state", name)).read())
    deadline = time.time() + 10
    while time.time() < deadline and progress(fleet, name).get("resumed_from") is None:
        time.sleep(0.1)
    record = progress(fleet, name)
    assert record["resumed_from"] == step, "the trainer resumed from exactly the checkpoint it was given"
    assert record["step"] >= step
    fleet_play([{"spot.migration.workload": dict(ident, state="absent"), "register": "gone"},
                {"spot.migration.workload": dict(ident, state="absent"), "register": "gone2"},
                {"ansible.builtin.assert": {"that": ["gone is changed", "gone2 is not changed"]}}])


@pytest.mark.parametrize("runtime", ["process", "podman"])
def test_never_a_second_copy(fleet, fleet_play, runtime):
    name = f"once-{runtime}"
    s = spec(fleet, runtime, name)
    other = spec(fleet, runtime, name, extra_args=["--lr", "0.01"])
    result = fleet_play([
        {"spot.migration.workload": s},
        {"spot.migration.workload": other, "register": "clash", "ignore_errors": True},
        {"ansible.builtin.assert": {"that": ["clash is failed", "'already running with a different spec' in clash.msg",
                                             "'args' in clash.msg"]}},
        {"spot.migration.workload": dict(other, recreate=True), "register": "re"},
        {"spot.migration.workload_info": {"workload_root": s["workload_root"], "name": name}, "register": "info"},
        {"ansible.builtin.assert": {"that": ["re is changed", "info.workloads | selectattr('running') | list | length == 1",
                                             "'0.01' in info.workloads[0].spec.args"]}},
        {"spot.migration.workload": {k: v for k, v in s.items() if k in ("name", "runtime", "workload_root")}
         | {"state": "absent"}},
    ])
    assert "failed=0" in result.stdout


@pytest.mark.parametrize("runtime", ["process", "podman"])
def test_workload_that_ignores_the_signal(fleet, fleet_play, runtime):
    name = f"deaf-{runtime}"
    node = fleet.node("node1")
    ck = os.path.join(node.paths["checkpoints"], name)
    os.makedirs(ck, exist_ok=True)
    code = ("import signal, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
    s = {"name": name, "runtime": runtime, "checkpoint_dir": ck, "workload_root": node.paths["workloads"]}
    if runtime == "process":
        s["command"] = ["{{ ansible_python_interpreter }}", "-c", code]
    else:
        s.update(image=fleet.image, command=["/bin/sh", "-c", "trap '' USR1 TERM; while :; do sleep 1; done"])
    # An older complete checkpoint is on disk; it must survive the failed attempt untouched.
    fleet_play([{"ansible.builtin.command": {"argv": ["{{ ansible_python_interpreter }}", fleet.trainer,
                                                      "--checkpoint-dir", ck, "--max-steps", "5", "--step-time", "0"]}}])
    before = sorted(os.listdir(ck))
    ident = {k: s[k] for k in ("name", "runtime", "workload_root")}
    fleet_play([
        {"spot.migration.workload": s},
        {"spot.migration.workload": dict(ident, state="checkpointed", deadline=2), "register": "late",
         "ignore_errors": True},
        {"ansible.builtin.assert": {"that": [
            "late is failed", "'wrote no complete checkpoint within 2.0 s of SIGUSR1' in late.msg",
            "'still running' in late.msg", "'step-00000005.safetensors (step 5)' in late.msg"]}},
        {"spot.migration.workload": dict(ident, state="stopped", stop_timeout=1), "register": "st"},
        {"ansible.builtin.assert": {"that": ["st.stopped_by == 'SIGKILL'"]}},
        {"spot.migration.workload": dict(ident, state="absent")},
    ])
    assert sorted(os.listdir(ck)) == before


HOSTILE = ["; touch {canary}", "$(touch {canary})", "`touch {canary}`", "a b\tc", "it's \"quoted\"",
           "line1\nline2", "-rf", "--help", "&& touch {canary}", "| touch {canary}"]


@pytest.mark.parametrize("runtime", ["process", "podman"])
def test_hostile_arguments_are_data(fleet, fleet_play, runtime, tmp_path):
    node = fleet.node("node1")
    canary = os.path.join(node.root, "state", f"CANARY-{runtime}")
    ck = os.path.join(node.paths["checkpoints"], f"odd dir $(x) 'q' -{runtime}")
    os.makedirs(ck, exist_ok=True)
    args = [a.format(canary=canary) for a in HOSTILE]
    out = os.path.join(ck, "argv.json")
    code = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    s = {"name": f"odd-{runtime}", "runtime": runtime, "checkpoint_dir": ck, "workload_root": node.paths["workloads"],
         "env": {"ODD": "$(touch " + canary + ")"}}
    if runtime == "process":
        s.update(command=["{{ ansible_python_interpreter }}", "-c", code], args=[out] + args)
    else:
        s.update(image=fleet.image, command=["/bin/sh", "-c", 'printf "%s\\n" "$@" > "$0/argv.txt"; echo "$ODD" >> "$0/argv.txt"'],
                 args=[ck] + args)
    fleet_play([
        {"spot.migration.workload": s, "ignore_errors": True},
        {"ansible.builtin.pause": {"seconds": 2}},
        {"spot.migration.workload": {k: s[k] for k in ("name", "runtime", "workload_root")} | {"state": "absent"}},
    ])
    assert not os.path.exists(canary), "an argument was executed"
    if runtime == "process":
        assert json.load(open(out)) == [out] + args
    else:
        text = open(os.path.join(ck, "argv.txt")).read()
        assert "$(touch " + canary + ")" in text and "; touch " + canary in text


@pytest.mark.parametrize("name", ["bad;name", "$(touch x)", "-rf", "a b", "x" * 64, "../up"])
def test_bad_names_are_refused(fleet, fleet_play, name):
    node = fleet.node("node1")
    result = fleet_play([
        {"spot.migration.workload": {"name": name, "command": ["true"], "workload_root": node.paths["workloads"]},
         "register": "r", "ignore_errors": True},
        {"ansible.builtin.assert": {"that": ["r is failed", "'is not allowed' in r.msg"]}},
    ])
    assert "failed=0" in result.stdout
