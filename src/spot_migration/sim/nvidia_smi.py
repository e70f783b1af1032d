"""A stand-in for ``nvidia-smi``'s scripted interface, answering from a per-node JSON GPU state.

It implements what tools are told to use (``--query-gpu``, ``--query-compute-apps``,
``-L``, ``--format=csv[,noheader][,nounits]``) with the real header and unit formats,
``[N/A]`` values, field validation errors (exit 2) and a driver-failure mode (exit 9).

GPU state file (JSON)::

    {"driver_version": "550.54.15", "failure": null,
     "gpus": [{"index": 0, "uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3",
               "memory_total_mb": 81559, "memory_used_mb": 0, "utilization_gpu": 0,
               "temperature_c": 31, "mig_mode": "Disabled", "processes": []}]}

Live processes show up by themselves: any process whose environment carries
``SPOT_SIM_GPU_STATE=<this state file>`` is listed on the GPUs its
``CUDA_VISIBLE_DEVICES`` names, using ``SPOT_SIM_GPU_MEMORY_MB`` (default 4096) MiB
each, and makes those GPUs busy (``SPOT_SIM_GPU_UTILIZATION``, default 90 %).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

STATE_ENV = "SPOT_SIM_GPU_STATE"
DRIVER_FAILURE = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                  "Make sure that the latest NVIDIA driver is installed and running.\n")
NOT_AVAILABLE = "[N/A]"

# field name -> (header, unit shown without nounits, getter)
GPU_FIELDS: dict[str, tuple[str, str, Any]] = {
    "index": ("index", "", lambda g, s: g["index"]),
    "count": ("count", "", lambda g, s: len(s["gpus"])),
    "name": ("name", "", lambda g, s: g.get("name")),
    "gpu_name": ("name", "", lambda g, s: g.get("name")),
    "uuid": ("uuid", "", lambda g, s: g.get("uuid")),
    "gpu_uuid": ("uuid", "", lambda g, s: g.get("uuid")),
    "driver_version": ("driver_version", "", lambda g, s: s.get("driver_version")),
    "pci.bus_id": ("pci.bus_id", "", lambda g, s: g.get("pci_bus_id", f"00000000:{0x18 + g['index']:02X}:00.0")),
    "memory.total": ("memory.total [MiB]", " MiB", lambda g, s: g.get("memory_total_mb")),
    "memory.used": ("memory.used [MiB]", " MiB", lambda g, s: g.get("memory_used_mb")),
    "memory.free": ("memory.free [MiB]", " MiB", lambda g, s: g.get("memory_free_mb")),
    "memory.reserved": ("memory.reserved [MiB]", " MiB", lambda g, s: g.get("memory_reserved_mb", 0)),
    "utilization.gpu": ("utilization.gpu [%]", " %", lambda g, s: g.get("utilization_gpu")),
    "utilization.memory": ("utilization.memory [%]", " %", lambda g, s: g.get("utilization_memory")),
    "temperature.gpu": ("temperature.gpu", "", lambda g, s: g.get("temperature_c")),
    "power.draw": ("power.draw [W]", " W", lambda g, s: g.get("power_draw_w")),
    "mig.mode.current": ("mig.mode.current", "", lambda g, s: g.get("mig_mode")),
    "mig.mode.pending": ("mig.mode.pending", "", lambda g, s: g.get("mig_mode")),
    "persistence_mode": ("persistence_mode", "", lambda g, s: "Enabled"),
}
APP_FIELDS: dict[str, tuple[str, str, Any]] = {
    "gpu_uuid": ("gpu_uuid", "", lambda p: p["gpu_uuid"]),
    "gpu_name": ("gpu_name", "", lambda p: p["gpu_name"]),
    "gpu_bus_id": ("gpu_bus_id", "", lambda p: p["gpu_bus_id"]),
    "pid": ("pid", "", lambda p: p["pid"]),
    "process_name": ("process_name", "", lambda p: p["name"]),
    "name": ("process_name", "", lambda p: p["name"]),
    "used_memory": ("used_gpu_memory [MiB]", " MiB", lambda p: p.get("used_memory_mb")),
    "used_gpu_memory": ("used_gpu_memory [MiB]", " MiB", lambda p: p.get("used_memory_mb")),
}


def default_state(gpus: int = 2, name: str = "NVIDIA H100 80GB HBM3", memory_mb: int = 81559,
                  seed: str = "") -> dict[str, Any]:
    """A state file's content for ``gpus`` idle GPUs (stable UUIDs for a given seed)."""
    return {
        "driver_version": "550.54.15",
        "failure": None,
        "gpus": [{"index": i, "uuid": "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"spot-sim/{seed}/{i}")),
                  "name": name, "memory_total_mb": memory_mb, "memory_used_mb": 0, "utilization_gpu": 0,
                  "temperature_c": 31 + i, "mig_mode": "Disabled", "processes": []} for i in range(gpus)],
    }


def _live_processes(state_path: Path, gpus: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Processes whose environment ties them to this state file: (gpu, process) pairs."""
    wanted = f"{STATE_ENV}={state_path}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            if wanted not in environ:
                continue
            with open(f"/proc/{entry.name}/comm", "rb") as handle:
                comm = handle.read().decode(errors="replace").strip()
        except OSError:
            continue  # gone, or not ours to read
        env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
        visible = env.get("CUDA_VISIBLE_DEVICES", "")
        memory = int(env.get("SPOT_SIM_GPU_MEMORY_MB", "4096") or 4096)
        for token in [t.strip() for t in visible.split(",") if t.strip()]:
            gpu = next((g for g in gpus if str(g["index"]) == token or g.get("uuid") == token), None)
            if gpu is not None:
                found.append((gpu, {"pid": int(entry.name), "name": comm, "used_memory_mb": memory,
                                    "utilization": int(env.get("SPOT_SIM_GPU_UTILIZATION", "90") or 90)}))
    return found


def load_state(path: Path) -> dict[str, Any]:
    """Read the state and fold live processes into memory, utilization and the process list."""
    state = json.loads(path.read_text())
    gpus = state.get("gpus", [])
    for gpu in gpus:
        gpu.setdefault("processes", [])
    for gpu, proc in _live_processes(path.resolve(), gpus):
        gpu["processes"].append({k: v for k, v in proc.items() if k != "utilization"})
        if gpu.get("memory_used_mb") is not None:
            gpu["memory_used_mb"] += proc["used_memory_mb"]
        if gpu.get("utilization_gpu") is not None:
            gpu["utilization_gpu"] = max(gpu["utilization_gpu"], proc["utilization"])
    for gpu in gpus:
        total, used = gpu.get("memory_total_mb"), gpu.get("memory_used_mb")
        if "memory_free_mb" not in gpu or gpu["processes"]:
            gpu["memory_free_mb"] = None if total is None or used is None else max(0, total - used)
    return state


def _fmt(value: Any, unit: str, nounits: bool) -> str:
    if value is None:
        return NOT_AVAILABLE
    return f"{value}{'' if nounits else unit}"


def _parse_format(value: str | None) -> tuple[bool, bool] | str:
    if value is None:
        return "Format must be specified with --format."
    parts = [p.strip() for p in value.split(",")]
    if "csv" not in parts or any(p not in ("csv", "noheader", "nounits") for p in parts):
        return f'"{value}" is not a valid format.'
    return "noheader" in parts, "nounits" in parts


def main(argv: list[str] | None = None, out=None) -> int:
    """Entry point: ``nvidia-smi`` arguments; the state file comes from --state or $SPOT_SIM_GPU_STATE."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    state_path = os.environ.get(STATE_ENV)
    options: dict[str, str | None] = {}
    positional = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            options[key] = value
        elif arg in ("--state", "--format", "--query-gpu", "--query-compute-apps", "-i", "--id") and i + 1 < len(argv):
            options[arg] = argv[i + 1]
            i += 1
        else:
            positional.append(arg)
        i += 1
    state_path = options.pop("--state", None) or state_path
    if not state_path:
        out.write(f"nvidia-smi stand-in: no GPU state (set {STATE_ENV} or --state)\n")
        return 9
    try:
        state = load_state(Path(state_path))
    except (OSError, ValueError) as exc:
        out.write(f"nvidia-smi stand-in: cannot read GPU state {state_path}: {exc}\n")
        return 9
    if state.get("failure") == "driver":
        out.write(DRIVER_FAILURE)
        return 9
    gpus = state.get("gpus", [])
    selected = options.get("-i") or options.get("--id")
    if selected is not None:
        wanted = {t.strip() for t in selected.split(",")}
        gpus = [g for g in gpus if str(g["index"]) in wanted or g.get("uuid") in wanted]
        if not gpus:
            out.write(f"No devices were found matching the ID(s) {selected}\n")
            return 6

    if "-L" in positional or "--list-gpus" in positional:
        for gpu in gpus:
            out.write(f"GPU {gpu['index']}: {gpu.get('name')} (UUID: {gpu.get('uuid')})\n")
        return 0

    for option, table in (("--query-gpu", GPU_FIELDS), ("--query-compute-apps", APP_FIELDS)):
        if option not in options:
            continue
        fields = [f.strip() for f in (options[option] or "").split(",") if f.strip()]
        for field in fields:
            if field not in table:
                out.write(f'Field "{field}" is not a valid field to query.\n\n')
                return 2
        fmt = _parse_format(options.get("--format"))
        if isinstance(fmt, str):
            out.write(fmt + "\n")
            return 2
        noheader, nounits = fmt
        if not noheader:
            out.write(", ".join(table[f][0] for f in fields) + "\n")
        if option == "--query-gpu":
            for gpu in gpus:
                out.write(", ".join(_fmt(table[f][2](gpu, state), table[f][1], nounits) for f in fields) + "\n")
        else:
            for gpu in gpus:
                for proc in gpu.get("processes", []):
                    row = dict(proc, gpu_uuid=gpu.get("uuid"), gpu_name=gpu.get("name"),
                               gpu_bus_id=f"00000000:{0x18 + gpu['index']:02X}:00.0")
                    out.write(", ".join(_fmt(table[f][2](row), table[f][1], nounits) for f in fields) + "\n")
        return 0

    if positional or options:
        out.write(f"Invalid combination of input arguments: {' '.join(argv)}. "
                  "Please run 'nvidia-smi -h' for help.\n")
        return 2
    # No arguments: a short summary (the real table is for people, not for parsing).
    out.write(f"nvidia-smi stand-in, driver {state.get('driver_version')}, {len(gpus)} GPU(s)\n")
    for gpu in gpus:
        out.write(f"  GPU {gpu['index']}: {gpu.get('name')}  {gpu.get('memory_used_mb')}MiB / "
                  f"{gpu.get('memory_total_mb')}MiB  {gpu.get('utilization_gpu')}%  "
                  f"{len(gpu.get('processes', []))} process(es)\n")
    return 0


def install(dest_dir: Path, state_path: Path, python: str | None = None) -> Path:
    """Write an ``nvidia-smi`` executable into ``dest_dir`` that answers from ``state_path``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    script = dest_dir / "nvidia-smi"
    python = python or sys.executable
    src = Path(__file__).resolve().parents[2]
    script.write_text(
        "#!/bin/sh\n"
        "# spot.migration GPU stand-in: answers nvidia-smi's scripted interface from a JSON state file.\n"
        f"PYTHONPATH='{src}'${{PYTHONPATH:+:$PYTHONPATH}} exec '{python}' -m spot_migration.sim.nvidia_smi "
        f"--state '{state_path}' \"$@\"\n")
    script.chmod(0o755)
    return script


if __name__ == "__main__":
    sys.exit(main())
