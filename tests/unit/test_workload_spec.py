"""The workload spec: what is accepted, what is refused (naming the value), and argv building."""

from __future__ import annotations

import pytest

from ansible_collections.spot.migration.plugins.module_utils._workload import (
    WorkloadError, build_spec, pick_gpus, signal_number, spec_differences, workload_argv)

BASE = {"name": "job", "runtime": "process", "command": ["python3", "train.py"], "args": ["--x", "1"]}


def test_argv_with_resume_substituted_as_data():
    spec = build_spec(dict(BASE, resume_from="/ck/step 1; rm -rf /", resume_arg=["--resume={checkpoint}"]))
    assert workload_argv(spec) == ["python3", "train.py", "--x", "1", "--resume=/ck/step 1; rm -rf /"]


@pytest.mark.parametrize("params, message", [
    (dict(BASE, name="a;b"), "workload name 'a;b' is not allowed"),
    (dict(BASE, name=""), "workload name '' is not allowed"),
    (dict(BASE, runtime="lxc"), "runtime must be one of"),
    (dict(BASE, command=[]), "needs a command"),
    (dict(BASE, image="x"), "image is for container runtimes"),
    (dict(BASE, runtime="podman", command=None), "needs an image"),
    (dict(BASE, runtime="podman", image="i", volumes=["relative:/x"]), "volume 'relative:/x' must be"),
    (dict(BASE, runtime="podman", image="i", checkpoint_dir="/a:b"), "path '/a:b' contains"),
    (dict(BASE, env={"BAD-NAME": "1"}), "environment variable name 'BAD-NAME'"),
    (dict(BASE, checkpoint_signal="SIGNOPE"), "unknown signal 'SIGNOPE'"),
    (dict(BASE, resume_from="/x", resume_arg=["--resume"]), "no {checkpoint} placeholder"),
])
def test_refused_with_the_value(params, message):
    with pytest.raises(WorkloadError) as info:
        build_spec(params)
    assert message in str(info.value)


def test_signal_names():
    assert signal_number("usr1") == signal_number("SIGUSR1") == 10


def test_spec_differences():
    a = build_spec(BASE)
    b = build_spec(dict(BASE, args=["--x", "2"]))
    assert spec_differences(a, b) == ["args"]
    assert spec_differences(a, build_spec(BASE)) == []


@pytest.mark.parametrize("gpus, free, expected", [(None, [0, 1], []), ([3, 1], [], [3, 1]), (2, [1, 2, 3], [1, 2])])
def test_pick_gpus(gpus, free, expected):
    assert pick_gpus(gpus, lambda: free) == expected


def test_pick_gpus_not_enough_free():
    with pytest.raises(WorkloadError, match="2 GPU\\(s\\) asked for, only 1 free"):
        pick_gpus(2, lambda: [0])


def test_a_fenced_copy_is_removed_and_never_started_again_unless_moved_back(tmp_path):
    from ansible_collections.spot.migration.plugins.module_utils import _workload as wl

    class Driver:
        def __init__(self):
            self.running = {"train": True}

        def status(self, name):
            return {"running": self.running[name], "spec": {}} if name in self.running else None

        def stop(self, name, timeout):
            self.running[name] = False
            return "SIGTERM"

        def remove(self, name):
            del self.running[name]

    driver, root = Driver(), str(tmp_path)
    first = wl.ensure_fenced(driver, "train", root, "m-7", check_mode=False)
    assert first["changed"] and first["stopped_by"] == "SIGTERM" and "train" not in driver.running
    assert wl.ensure_fenced(driver, "train", root, "m-7", check_mode=False)["changed"] is False
    with pytest.raises(wl.WorkloadError, match="fenced on this node \\(m-7\\)"):
        wl.check_fence(root, "train", clear_fence=False, check_mode=False)
    assert wl.check_fence(root, "train", clear_fence=True, check_mode=False) is True
    assert wl.check_fence(root, "train", clear_fence=False, check_mode=False) is False
