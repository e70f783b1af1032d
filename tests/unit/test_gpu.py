"""gpu_info's backends: recorded nvidia-smi outputs through the one command seam, NVML through a fake library."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import yaml

from ansible_collections.spot.migration.plugins.module_utils import _gpu
from ansible_collections.spot.migration.plugins.module_utils._gpu import GpuError

CASES = yaml.safe_load((Path(__file__).parent / "data" / "nvidia_smi_cases.yml").read_text())


class Commands:
    """The command seam: answers --query-gpu and --query-compute-apps from a recorded case."""

    def __init__(self, case):
        self.case = case
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(list(argv))
        if "rc" in self.case:
            return self.case["rc"], self.case.get("out", ""), self.case.get("err", "")
        if argv[1].startswith("--query-gpu="):
            return 0, self.case["gpu"], ""
        return 0, self.case.get("apps", ""), ""


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_nvidia_smi_recorded(case):
    run = Commands(case)
    backend = _gpu.NvidiaSmiBackend(run, "/usr/bin/nvidia-smi")
    if "error" in case:
        with pytest.raises(GpuError) as info:
            _gpu.gpu_facts(backend, **case.get("params", {}))
        assert case["error"] in str(info.value)
        if "error_rc" in case:
            assert info.value.details["rc"] == case["error_rc"]
            assert "/usr/bin/nvidia-smi --query-gpu=" in str(info.value)
        return
    facts = _gpu.gpu_facts(backend, **case.get("params", {}))
    for key, want in case["expect"].items():
        assert facts[key] == want, key
    for key, want in case.get("gpu0", {}).items():
        assert facts["gpus"][0][key] == want, key
    assert facts["backend"] == "nvidia-smi"
    assert run.calls[0] == ["/usr/bin/nvidia-smi", "--query-gpu=" + ",".join(_gpu.GPU_FIELDS),
                            "--format=csv,noheader,nounits"]
    assert run.calls[1] == ["/usr/bin/nvidia-smi", "--query-compute-apps=" + ",".join(_gpu.APP_FIELDS),
                            "--format=csv,noheader,nounits"]
    for gpu in facts["gpus"]:
        assert set(gpu) == {"index", "uuid", "name", "memory_total_mb", "memory_used_mb", "memory_free_mb",
                            "utilization_gpu", "temperature_c", "mig_mode", "processes"}


def test_units_are_accepted_when_nounits_is_missing():
    gpus, _driver = _gpu.parse_gpu_csv("0, GPU-a, NVIDIA L4, 23034 MiB, 10 MiB, 23024 MiB, 3 %, 40, Disabled, 550.54.15\n")
    assert gpus[0]["memory_total_mb"] == 23034 and gpus[0]["utilization_gpu"] == 3


class FakeNvml:
    """Stands in for libnvidia-ml.so.1: same function names, same ctypes calling convention."""

    def __init__(self, devices, driver="550.54.15", init_rc=0):
        self.devices = devices
        self.driver = driver
        self.init_rc = init_rc
        self.shutdowns = 0

    @staticmethod
    def _put(buf, text):
        ctypes.memmove(buf, text.encode() + b"\0", len(text) + 1)

    def nvmlInit_v2(self):  # noqa: N802 - NVML names
        return self.init_rc

    def nvmlShutdown(self):  # noqa: N802
        self.shutdowns += 1
        return 0

    def nvmlErrorString(self, rc):  # noqa: N802
        return {2: b"Invalid Argument", 9: b"Driver Not Loaded"}.get(rc, b"Unknown Error")

    def nvmlSystemGetDriverVersion(self, buf, size):  # noqa: N802
        self._put(buf, self.driver)
        return 0

    def nvmlDeviceGetCount_v2(self, count):  # noqa: N802
        count._obj.value = len(self.devices)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):  # noqa: N802
        handle._obj.value = index.value + 1  # handles are opaque pointers; 0 would be NULL
        return 0

    def _dev(self, handle):
        return self.devices[handle.value - 1]

    def nvmlDeviceGetUUID(self, handle, buf, size):  # noqa: N802
        self._put(buf, self._dev(handle)["uuid"])
        return 0

    def nvmlDeviceGetName(self, handle, buf, size):  # noqa: N802
        self._put(buf, self._dev(handle)["name"])
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, mem):  # noqa: N802
        dev = self._dev(handle)
        if dev.get("memory") is None:
            return _gpu.NVML_ERROR_NOT_SUPPORTED
        total, used = dev["memory"]
        mem._obj.total, mem._obj.used, mem._obj.free = total * _gpu.MIB, used * _gpu.MIB, (total - used) * _gpu.MIB
        return 0

    def nvmlDeviceGetUtilizationRates(self, handle, util):  # noqa: N802
        dev = self._dev(handle)
        if dev.get("util") is None:
            return _gpu.NVML_ERROR_NOT_SUPPORTED
        util._obj.gpu = dev["util"]
        return 0

    def nvmlDeviceGetTemperature(self, handle, sensor, temp):  # noqa: N802
        temp._obj.value = self._dev(handle).get("temp", 30)
        return 0

    def nvmlDeviceGetMigMode(self, handle, current, pending):  # noqa: N802
        dev = self._dev(handle)
        if "mig" not in dev:
            return _gpu.NVML_ERROR_NOT_SUPPORTED
        current._obj.value = pending._obj.value = 1 if dev["mig"] else 0
        return 0

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle, count, infos):  # noqa: N802
        procs = self._dev(handle).get("procs", [])
        if infos is None:
            count._obj.value = len(procs)
            return 0 if not procs else _gpu.NVML_ERROR_INSUFFICIENT_SIZE
        for i, (pid, used) in enumerate(procs):
            infos[i].pid = pid
            infos[i].usedGpuMemory = used
        count._obj.value = len(procs)
        return 0

    def nvmlSystemGetProcessName(self, pid, buf, size):  # noqa: N802
        self._put(buf, f"/usr/bin/python{pid.value % 10}")
        return 0


def test_nvml_backend_parses_devices_and_processes():
    lib = FakeNvml([
        {"uuid": "GPU-n0", "name": "NVIDIA H100 80GB HBM3", "memory": (81559, 40000), "util": 97, "mig": False,
         "procs": [(4242, 40000 * _gpu.MIB), (4243, (1 << 64) - 1)]},
        {"uuid": "GPU-n1", "name": "NVIDIA H100 80GB HBM3", "memory": (81559, 0), "util": 0, "mig": False},
        {"uuid": "GPU-n2", "name": "Tesla T4", "memory": None, "util": None},
    ])
    facts = _gpu.gpu_facts(_gpu.NvmlBackend(lib))
    assert facts["backend"] == "nvml" and facts["driver_version"] == "550.54.15"
    g0, g1, g2 = facts["gpus"]
    assert g0["uuid"] == "GPU-n0" and g0["memory_used_mb"] == 40000 and g0["memory_free_mb"] == 41559
    assert g0["processes"] == [{"pid": 4242, "name": "python2", "used_memory_mb": 40000},
                               {"pid": 4243, "name": "python3", "used_memory_mb": None}]
    assert g1["processes"] == [] and g1["mig_mode"] == "Disabled"
    assert g2["memory_total_mb"] is None and g2["utilization_gpu"] is None and g2["mig_mode"] is None
    assert facts["free_gpus"] == [1, 2]
    assert lib.shutdowns == 1


def test_nvml_init_failure_names_the_error():
    lib = FakeNvml([], init_rc=9)
    with pytest.raises(GpuError, match="nvmlInit_v2: Driver Not Loaded"):
        _gpu.NvmlBackend(lib).read()


def _no_nvml():
    raise GpuError("NVML library libnvidia-ml.so.1 could not be loaded: not found")


def test_auto_falls_back_to_nvidia_smi():
    backend = _gpu.create_backend("auto", None, which=lambda name: "nvidia-smi", nvml_loader=_no_nvml)
    assert backend.name == "nvidia-smi"


def test_auto_prefers_nvml_when_it_loads():
    backend = _gpu.create_backend("auto", None, which=lambda name: "nvidia-smi", nvml_loader=lambda: FakeNvml([]))
    assert backend.name == "nvml"


def test_neither_backend_fails_saying_so():
    with pytest.raises(GpuError, match="no NVIDIA GPU tooling on this node: NVML library .* nvidia-smi not found on PATH"):
        _gpu.create_backend("auto", None, which=lambda name: None, nvml_loader=_no_nvml)


def test_nvml_required_but_missing():
    with pytest.raises(GpuError, match="could not be loaded"):
        _gpu.create_backend("nvml", None, nvml_loader=_no_nvml)


def test_real_loader_reports_missing_library():
    with pytest.raises(GpuError, match="libnvidia-ml-does-not-exist.so"):
        _gpu.load_nvml("libnvidia-ml-does-not-exist.so")
