"""Checkpoints written by the real libraries (torch.save, torch.distributed.checkpoint, safetensors),
with content derived from the step so a test can prove what it got back."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def tensors(step: int, numel: int = 4096) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((numel,), float(step)), "layer.bias": torch.arange(16, dtype=torch.float32) + step}


def write_torch(path: Path, step: int, numel: int = 4096) -> Path:
    torch.save({"step": step, "model": tensors(step, numel)}, path)
    return path


def write_safetensors(path: Path, step: int, numel: int = 4096) -> Path:
    save_file(tensors(step, numel), str(path), metadata={"step": str(step)})
    return path


def write_dcp(path: Path, step: int, numel: int = 4096) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": tensors(step, numel)}, checkpoint_id=str(path))
    return path


def write_hf(root: Path, step: int, numel: int = 4096, shards: int = 1) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if shards == 1:
        write_safetensors(path / "model.safetensors", step, numel)
    else:
        weight_map = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({f"part{i}": torch.full((numel,), float(step))}, str(path / name))
            weight_map[f"part{i}"] = name
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.save({"lr": 1e-4}, path / "optimizer.pt")
    (path / "config.json").write_text(json.dumps({"model_type": "toy"}))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.0, "log_history": []}))
    return path


def write_deepspeed(root: Path, step: int, commit: bool = True, numel: int = 4096) -> Path:
    tag = root / f"global_step{step}"
    tag.mkdir(parents=True)
    torch.save({"module": tensors(step, numel)}, tag / "mp_rank_00_model_states.pt")
    torch.save({"optimizer": {}}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    if commit:
        (root / "latest").write_text(f"global_step{step}")
    return tag


def write_orbax(root: Path, step: int, commit_file: bool = True, tmp: bool = False) -> Path:
    name = f"{step}.orbax-checkpoint-tmp-{1700000000 + step}" if tmp else str(step)
    path = root / name
    (path / "default").mkdir(parents=True)
    (path / "default" / "array.bin").write_bytes(os.urandom(1024))
    (path / "_CHECKPOINT_METADATA").write_text(json.dumps({"init_timestamp_nsecs": 1}))
    if commit_file:
        (path / "commit_success.txt").write_text("Checkpoint commit was successful")
    return path


def load_step(path: Path, numel: int = 4096) -> int:
    """Load a checkpoint with its own library and return the step its tensors encode."""
    path = Path(path)
    if path.is_dir() and (path / ".metadata").exists():
        import torch.distributed.checkpoint as dcp

        state = {"model": tensors(0, numel)}
        dcp.load(state, checkpoint_id=str(path))
        return int(state["model"]["layer.weight"][0])
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return int(load_file(str(path))["layer.weight"][0])
    return int(torch.load(path, weights_only=True)["model"]["layer.weight"][0])
