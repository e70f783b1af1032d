"""The nvidia-smi stand-in answers the scripted interface like the real one."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from spot_migration.sim import nvidia_smi


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(nvidia_smi.default_state(2, seed="t")))
    return path


def smi(state, *args):
    out = io.StringIO()
    rc = nvidia_smi.main(["--state", str(state), *args], out=out)
    return rc, out.getvalue()


def test_header_and_units(state):
    rc, out = smi(state, "--query-gpu=index,memory.total,utilization.gpu,temperature.gpu", "--format=csv")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "index, memory.total [MiB], utilization.gpu [%], temperature.gpu"
    assert lines[1] == "0, 81559 MiB, 0 %, 31"


def test_noheader_nounits(state):
    rc, out = smi(state, "--query-gpu=index,memory.free", "--format=csv,noheader,nounits")
    assert rc == 0 and out == "0, 81559\n1, 81559\n"


def test_not_available_values(state):
    data = json.loads(state.read_text())
    data["gpus"][0]["utilization_gpu"] = None
    state.write_text(json.dumps(data))
    rc, out = smi(state, "--query-gpu=utilization.gpu", "--format=csv,noheader")
    assert out.splitlines()[0] == "[N/A]"


@pytest.mark.parametrize("args, rc, message", [
    (["--query-gpu=index,bogus", "--format=csv"], 2, 'Field "bogus" is not a valid field to query.'),
    (["--query-gpu=index"], 2, "Format must be specified"),
    (["--query-gpu=index", "--format=xml"], 2, '"xml" is not a valid format.'),
    (["--frobnicate"], 2, "Invalid combination of input arguments"),
    (["-i", "7", "-L"], 6, "No devices were found"),
])
def test_validation_errors(state, args, rc, message):
    got_rc, out = smi(state, *args)
    assert got_rc == rc and message in out


def test_driver_failure(state):
    data = json.loads(state.read_text())
    data["failure"] = "driver"
    state.write_text(json.dumps(data))
    rc, out = smi(state, "-L")
    assert rc == 9 and "couldn't communicate with the NVIDIA driver" in out


def test_list_gpus(state):
    rc, out = smi(state, "-L")
    assert rc == 0 and out.startswith("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-")


def test_live_process_shows_up_and_goes_away(state):
    env = dict(os.environ, SPOT_SIM_GPU_STATE=str(state.resolve()), CUDA_VISIBLE_DEVICES="1",
               SPOT_SIM_GPU_MEMORY_MB="1234")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rc, out = smi(state, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
            if out:
                break
            time.sleep(0.05)
        assert out == f"{proc.pid}, 1234\n"
        rc, out = smi(state, "--query-gpu=index,memory.used,utilization.gpu", "--format=csv,noheader,nounits")
        assert out.splitlines() == ["0, 0, 0", "1, 1234, 90"]
    finally:
        proc.kill()
        proc.wait()
    rc, out = smi(state, "--query-compute-apps=pid", "--format=csv,noheader")
    assert out == ""


def test_installed_executable(tmp_path, state):
    script = nvidia_smi.install(tmp_path / "bin", state)
    result = subprocess.run([str(script), "-L"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.count("GPU ") == 2
