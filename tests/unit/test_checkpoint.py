"""checkpoint_info's completeness rules on checkpoints written by the real libraries, torn the ways
real failures tear them; manifests: bit flips, missing and extra files, idempotence."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _checkpoint as ck
from ansible_collections.spot.migration.plugins.module_utils._checkpoint import CheckpointError
from tests.helpers import writers


def age(path: Path, seconds: float) -> None:
    """Set a checkpoint's files' mtimes ``seconds`` into the past, newest written last."""
    stamp = time.time() - seconds
    targets = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in targets:
        os.utime(p, (stamp, stamp))


def truncate(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    if isinstance(keep, float):
        n = int(len(data) * keep)
    else:
        n = keep if keep >= 0 else len(data) + keep
    path.write_bytes(data[:n])


def reasons(result_or_exc) -> dict[str, str]:
    rejected = result_or_exc["rejected"] if isinstance(result_or_exc, dict) else result_or_exc.details["rejected"]
    return {Path(r["path"]).name: r["reason"] for r in rejected}


# ---------------------------------------------------------------- single files

@pytest.mark.parametrize("writer, suffix, fmt", [
    (writers.write_torch, ".pt", "torch"),
    (writers.write_safetensors, ".safetensors", "safetensors"),
])
@pytest.mark.parametrize("tear, reason", [
    (lambda p: truncate(p, 0.5), None),
    (lambda p: truncate(p, -1), None),
    (lambda p: truncate(p, -22), None),
    (lambda p: truncate(p, 7), None),
    (lambda p: p.write_bytes(b""), "zero-byte"),
    (lambda p: p.write_bytes(b"\x00" * 4096), None),
])
def test_torn_single_file_is_rejected(tmp_path, writer, suffix, fmt, tear, reason):
    good = writer(tmp_path / f"step-10{suffix}", 10)
    age(good, 60)
    torn = writer(tmp_path / f"step-20{suffix}", 20)
    tear(torn)
    result = ck.find_checkpoint(str(tmp_path))
    assert result["checkpoint"] == str(good) and result["format"] == fmt and result["step"] == 10
    assert f"step-20{suffix}" in reasons(result)
    if reason:
        assert reason in reasons(result)[f"step-20{suffix}"]
    assert writers.load_step(Path(result["checkpoint"])) == 10


def test_complete_files_newest_wins(tmp_path):
    writers.write_torch(tmp_path / "step-1.pt", 1)
    age(tmp_path / "step-1.pt", 30)
    writers.write_safetensors(tmp_path / "step-2.safetensors", 2)
    result = ck.find_checkpoint(str(tmp_path))
    assert result["format"] == "safetensors" and result["step"] == 2 and result["rejected"] == []
    assert result["size_bytes"] == (tmp_path / "step-2.safetensors").stat().st_size
    assert result["files"] == ["step-2.safetensors"]


def test_safetensors_header_lies(tmp_path):
    path = writers.write_safetensors(tmp_path / "a.safetensors", 3)
    data = bytearray(path.read_bytes())
    data[0:8] = (10 ** 9).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        ck.find_checkpoint(str(tmp_path))
    assert "header claims" in reasons(info.value)["a.safetensors"]


def test_safetensors_extra_bytes_are_not_complete(tmp_path):
    path = writers.write_safetensors(tmp_path / "a.safetensors", 3)
    with open(path, "ab") as handle:
        handle.write(b"junk")
    with pytest.raises(CheckpointError) as info:
        ck.find_checkpoint(str(tmp_path))
    assert "needs" in reasons(info.value)["a.safetensors"]


def test_legacy_pickle_torch_file_is_not_verifiable(tmp_path):
    import torch
    torch.save({"w": torch.ones(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as info:
        ck.find_checkpoint(str(tmp_path))
    assert "legacy pickle" in reasons(info.value)["old.pt"] or "not a complete zip" in reasons(info.value)["old.pt"]


@pytest.mark.parametrize("name", ["step-30.pt.tmp", "step-30.safetensors.partial", "step-30.pt~", ".tmp-step-30.pt"])
def test_temp_names_are_never_complete(tmp_path, name):
    writers.write_torch(tmp_path / "step-10.pt", 10)
    age(tmp_path / "step-10.pt", 60)
    writers.write_torch(tmp_path / name, 30)  # complete bytes, but still under a writer's name
    result = ck.find_checkpoint(str(tmp_path))
    assert result["step"] == 10
    assert "temporary name" in reasons(result)[name]


def test_logs_and_other_files_are_not_candidates(tmp_path):
    writers.write_torch(tmp_path / "step-10.pt", 10)
    age(tmp_path / "step-10.pt", 60)
    (tmp_path / "train.log").write_text("step 11\n")
    (tmp_path / "notes").mkdir()
    result = ck.find_checkpoint(str(tmp_path))
    assert result["step"] == 10 and result["rejected"] == []


# ---------------------------------------------------------------- directories

def test_dcp_complete_and_torn(tmp_path):
    good = writers.write_dcp(tmp_path / "step-100", 100)
    age(good, 60)
    no_meta = writers.write_dcp(tmp_path / "step-200", 200)
    (no_meta / ".metadata").unlink()
    age(no_meta, 30)
    newer_data = writers.write_dcp(tmp_path / "step-300", 300)
    age(newer_data, 20)
    os.utime(next(newer_data.glob("*.distcp")), None)  # data rewritten after .metadata: a save in progress
    result = ck.find_checkpoint(str(tmp_path))
    assert result["checkpoint"] == str(good) and result["format"] == "dcp" and result["step"] == 100
    why = reasons(result)
    assert "no .metadata" in why["step-200"] and "after .metadata" in why["step-300"]
    assert writers.load_step(good) == 100


def test_dcp_directory_given_directly(tmp_path):
    path = writers.write_dcp(tmp_path / "ckpt", 7)
    result = ck.find_checkpoint(str(path))
    assert result["checkpoint"] == str(path) and result["format"] == "dcp"


def test_hf_trainer_checkpoints(tmp_path):
    good = writers.write_hf(tmp_path, 500)
    age(good, 60)
    sharded = writers.write_hf(tmp_path, 600, shards=3)
    age(sharded, 50)
    no_state = writers.write_hf(tmp_path, 700)
    (no_state / "trainer_state.json").unlink()
    age(no_state, 40)
    bad_state = writers.write_hf(tmp_path, 800)
    (bad_state / "trainer_state.json").write_text('{"global_step": 8')
    age(bad_state, 30)
    missing_shard = writers.write_hf(tmp_path, 900, shards=2)
    (missing_shard / "model-00002-of-00002.safetensors").unlink()
    age(missing_shard, 20)
    torn_weights = writers.write_hf(tmp_path, 1000)
    truncate(torn_weights / "model.safetensors", 0.3)
    result = ck.find_checkpoint(str(tmp_path))
    assert result["checkpoint"] == str(sharded) and result["format"] == "hf" and result["step"] == 600
    why = reasons(result)
    assert "no trainer_state.json" in why["checkpoint-700"]
    assert "does not parse" in why["checkpoint-800"]
    assert "missing shards: model-00002-of-00002.safetensors" in why["checkpoint-900"]
    assert "model.safetensors: truncated" in why["checkpoint-1000"]
    assert "trainer_state.json" in result["files"]


def test_deepspeed_latest_is_the_commit_marker(tmp_path):
    writers.write_deepspeed(tmp_path, 10)
    writers.write_deepspeed(tmp_path, 20, commit=False)  # being saved: latest not updated yet
    result = ck.find_checkpoint(str(tmp_path))
    assert Path(result["checkpoint"]).name == "global_step10" and result["format"] == "deepspeed"
    assert result["step"] == 10
    assert "not named by latest" in reasons(result)["global_step20"]


def test_deepspeed_latest_naming_a_missing_tag(tmp_path):
    writers.write_deepspeed(tmp_path, 10)
    (tmp_path / "latest").write_text("global_step99")
    with pytest.raises(CheckpointError) as info:
        ck.find_checkpoint(str(tmp_path))
    assert "is not a directory" in reasons(info.value)["global_step99"]


def test_orbax_steps(tmp_path):
    good = writers.write_orbax(tmp_path, 100)
    age(good, 60)
    uncommitted = writers.write_orbax(tmp_path, 200, commit_file=False)
    age(uncommitted, 30)
    writers.write_orbax(tmp_path, 300, tmp=True)
    result = ck.find_checkpoint(str(tmp_path))
    assert result["checkpoint"] == str(good) and result["format"] == "orbax" and result["step"] == 100
    why = reasons(result)
    assert "commit_success.txt" in why["200"]
    assert "temporary name" in why["300.orbax-checkpoint-tmp-1700000300"]


def test_generic_sealed_directory(tmp_path):
    path = tmp_path / "snapshot-42"
    path.mkdir()
    (path / "weights.npy").write_bytes(os.urandom(2048))
    ck.seal(str(path), step=42)
    assert ck.find_checkpoint(str(tmp_path))["format"] == "generic"
    assert ck.find_checkpoint(str(tmp_path))["step"] == 42
    with open(path / "weights.npy", "ab") as handle:
        handle.write(b"more")
    with pytest.raises(CheckpointError) as info:
        ck.find_checkpoint(str(tmp_path))
    assert "2052 bytes, the manifest says 2048" in reasons(info.value)["snapshot-42"]


# ---------------------------------------------------------------- time filters and waiting

def test_stable_for_rejects_files_still_changing(tmp_path):
    writers.write_torch(tmp_path / "step-5.pt", 5)
    with pytest.raises(CheckpointError) as info:
        ck.find_checkpoint(str(tmp_path), stable_for=30)
    assert "still being written" in reasons(info.value)["step-5.pt"]
    assert ck.find_checkpoint(str(tmp_path), stable_for=0)["step"] == 5


def test_newer_than_and_max_age(tmp_path):
    writers.write_torch(tmp_path / "step-5.pt", 5)
    age(tmp_path / "step-5.pt", 120)
    cutoff = time.time() - 60
    with pytest.raises(CheckpointError, match="newer than"):
        ck.find_checkpoint(str(tmp_path), newer_than=cutoff)
    with pytest.raises(CheckpointError, match="at most 30 s old"):
        ck.find_checkpoint(str(tmp_path), max_age=30)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    assert ck.find_checkpoint(str(tmp_path), newer_than=ck.parse_time(iso))["step"] == 5


@pytest.mark.parametrize("value, ok", [("1700000000", True), (1700000000, True), ("2026-11-30T08:00:00Z", True),
                                       ("yesterday", False)])
def test_parse_time(value, ok):
    if ok:
        assert ck.parse_time(value) > 0
    else:
        with pytest.raises(CheckpointError, match="'yesterday'"):
            ck.parse_time(value)


def test_wait_for_a_checkpoint_that_appears(tmp_path):
    asked = time.time()
    timer = threading.Timer(0.6, lambda: writers.write_torch(tmp_path / "step-9.pt", 9))
    timer.start()
    try:
        result = ck.wait_for_checkpoint(str(tmp_path), wait_timeout=20, interval=0.1, newer_than=asked)
    finally:
        timer.cancel()
    assert result["step"] == 9 and 0.4 < result["elapsed"] < 15


def test_wait_gives_up_with_the_rejected_list(tmp_path):
    (tmp_path / "step-1.pt.partial").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="after waiting") as info:
        ck.wait_for_checkpoint(str(tmp_path), wait_timeout=0.3, interval=0.1)
    assert "step-1.pt.partial" in reasons(info.value)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.find_checkpoint(str(tmp_path / "nope"))


# ---------------------------------------------------------------- manifests

def test_manifest_seal_is_idempotent_and_atomic(tmp_path):
    path = writers.write_dcp(tmp_path / "step-1", 1)
    check = ck.seal(str(path), check_mode=True)
    assert check["changed"] and not (path / ck.MANIFEST_NAME).exists()
    first = ck.seal(str(path))
    assert first["changed"] and (path / ck.MANIFEST_NAME).exists()
    again_check = ck.seal(str(path), check_mode=True)
    again = ck.seal(str(path))
    assert not again_check["changed"] and not again["changed"]
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]
    manifest = json.loads((path / ck.MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {".metadata", "__0_0.distcp"}
    assert ck.verify(str(path))["file_count"] == 2


def test_manifest_for_a_single_file_sits_beside_it(tmp_path):
    path = writers.write_safetensors(tmp_path / "m.safetensors", 4)
    ck.seal(str(path))
    assert (tmp_path / ("m.safetensors" + ck.MANIFEST_NAME)).exists()
    assert ck.verify(str(path))["file_count"] == 1
    assert ck.find_checkpoint(str(tmp_path))["checkpoint"] == str(path)


@pytest.mark.parametrize("offset", [0, 100, -1])
def test_verify_detects_a_bit_flip(tmp_path, offset):
    path = writers.write_hf(tmp_path, 3)
    ck.seal(str(path))
    target = path / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        ck.verify(str(path))
    assert info.value.details["mismatched"][0]["file"] == "model.safetensors"
    assert "sha256" in info.value.details["mismatched"][0]["reason"]


def test_verify_lists_missing_extra_and_mismatched(tmp_path):
    path = writers.write_hf(tmp_path, 3)
    ck.seal(str(path))
    (path / "config.json").unlink()
    (path / "stray.bin").write_bytes(b"x")
    with open(path / "optimizer.pt", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(CheckpointError) as info:
        ck.verify(str(path))
    details = info.value.details
    assert details["missing"] == ["config.json"] and details["extra"] == ["stray.bin"]
    assert details["mismatched"][0]["file"] == "optimizer.pt" and "size" in details["mismatched"][0]["reason"]
    message = str(info.value)
    assert "missing: config.json" in message and "extra: stray.bin" in message and "optimizer.pt" in message


def test_verify_without_manifest(tmp_path):
    path = writers.write_dcp(tmp_path / "s", 1)
    with pytest.raises(CheckpointError, match="has no manifest"):
        ck.verify(str(path))


def test_hashing_matches_hashlib(tmp_path):
    import hashlib
    data = os.urandom(ck.HASH_CHUNK * 2 + 17)
    (tmp_path / "f").write_bytes(data)
    assert ck.sha256_file(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()
