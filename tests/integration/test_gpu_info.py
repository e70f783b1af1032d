"""gpu_info through ansible-playbook against the nvidia-smi stand-in (this machine has no NVML)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spot_migration.sim import nvidia_smi


@pytest.fixture
def gpus(tmp_path):
    state = tmp_path / "gpus.json"
    state.write_text(json.dumps(nvidia_smi.default_state(4, seed=str(tmp_path))))
    script = nvidia_smi.install(tmp_path / "bin", state)
    return state, script


def _play(tmp_path, tasks):
    path = tmp_path / "play.json"
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    return path


def test_gpu_info_end_to_end(run_playbook, tmp_path, gpus):
    state, script = gpus
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env=dict(os.environ, SPOT_SIM_GPU_STATE=str(state), CUDA_VISIBLE_DEVICES="2"))
    try:
        tasks = [
            {"spot.migration.gpu_info": {"backend": "nvidia-smi", "nvidia_smi_path": str(script)}, "register": "r"},
            {"ansible.builtin.assert": {"that": [
                "r is not changed", "r.backend == 'nvidia-smi'", "r.gpu_count == 4",
                "r.free_gpus == [0, 1, 3]", "r.free_gpu_count == 3", "r.driver_version == '550.54.15'",
                f"r.gpus[2].processes[0].pid == {busy.pid}", "r.gpus[2].utilization_gpu == 90",
            ]}},
            {"name": "auto falls back to nvidia-smi on PATH when NVML is not there",
             "spot.migration.gpu_info": {}, "register": "auto", "check_mode": True,
             "environment": {"PATH": f"{script.parent}:{os.environ['PATH']}"}},
            {"ansible.builtin.assert": {"that": ["auto.backend == 'nvidia-smi'", "auto.gpu_count == 4"]}},
            {"name": "thresholds", "spot.migration.gpu_info": {
                "nvidia_smi_path": str(script), "require_no_processes": False, "max_utilization": 95,
                "min_free_memory_mb": 80000}, "register": "t"},
            {"ansible.builtin.assert": {"that": ["t.free_gpus == [0, 1, 3]"]}},
        ]
        result = run_playbook(_play(tmp_path, tasks))
    finally:
        busy.kill()
        busy.wait()
    assert result.returncode == 0, result.stdout[-4000:]


def test_gpu_info_driver_failure_and_missing_tools(run_playbook, tmp_path, gpus):
    state, script = gpus
    data = json.loads(state.read_text())
    data["failure"] = "driver"
    state.write_text(json.dumps(data))
    tasks = [
        {"spot.migration.gpu_info": {"backend": "nvidia-smi", "nvidia_smi_path": str(script)},
         "register": "r", "ignore_errors": True},
        {"ansible.builtin.assert": {"that": [
            "r is failed", "r.rc == 9", "'couldn\\'t communicate with the NVIDIA driver' in r.msg"]}},
        {"spot.migration.gpu_info": {"backend": "nvidia-smi", "nvidia_smi_path": str(tmp_path / "missing")},
         "register": "m", "ignore_errors": True},
        {"ansible.builtin.assert": {"that": ["m is failed", "'nvidia-smi not found at' in m.msg"]}},
    ]
    result = run_playbook(_play(tmp_path, tasks))
    assert result.returncode == 0, result.stdout[-4000:]
