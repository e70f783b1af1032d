"""Replicas are published only complete and verified, atomically; a bad or interrupted copy leaves the previous
replicas as they were; the last K are kept; rsync --link-dest hard-links what did not change."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _checkpoint as ck
from ansible_collections.spot.migration.plugins.module_utils import _replica as rep


def make_checkpoint(directory, step: int, shards: dict[str, bytes]) -> str:
    """A sharded directory checkpoint, sealed like the source seals it before it is copied."""
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name, data in shards.items():
        (path / name).write_bytes(data)
    ck.seal(str(path), step=step)
    return str(path)


def copy_in(root, source: str, step: int, tag: str = "a", link_dest: str | None = None) -> str:
    """Copy like the replicate playbook does: with --link-dest the manifests are left out of the first pass (rsync's
    quick check could link an older manifest of the same size and time) and copied by a second one."""
    incoming = f".incoming-{step}-{tag}"
    argv = ["rsync", "--archive", "--whole-file", "--mkpath"]
    if link_dest:
        subprocess.run([*argv, f"--link-dest={link_dest}", f"--exclude=*{ck.MANIFEST_NAME}", source,
                        str(root / incoming) + "/"], check=True)
    subprocess.run([*argv, source, str(root / incoming) + "/"], check=True)
    return incoming


def test_publish_verifies_renames_points_latest_and_keeps_two(tmp_path):
    src, root = tmp_path / "src", tmp_path / "replicas"
    for step in (100, 200, 300):
        ckpt = make_checkpoint(src, step, {"model.bin": os.urandom(4096), "optim.bin": b"o" * 2048})
        result = rep.publish(str(root), copy_in(root, ckpt, step), step, keep=2)
        assert result["changed"] and result["replica"]["step"] == step
        assert json.loads((root / "latest.json").read_text())["step"] == step
    assert [r["step"] for r in rep.replicas(str(root))] == [200, 300]
    assert not list(root.glob(".incoming-*"))
    again = rep.publish(str(root), copy_in(root, ckpt, 300, tag="b"), 300, keep=2)
    assert again["changed"] is False and not list(root.glob(".incoming-*"))


def test_a_bad_copy_is_removed_and_the_previous_replica_stays(tmp_path):
    src, root = tmp_path / "src", tmp_path / "replicas"
    good = make_checkpoint(src, 100, {"model.bin": b"m" * 1000})
    rep.publish(str(root), copy_in(root, good, 100), 100)
    before = (root / "latest.json").read_text()
    bad = make_checkpoint(src, 200, {"model.bin": b"n" * 1000})
    incoming = copy_in(root, bad, 200)
    (root / incoming / "checkpoint-200" / "model.bin").write_bytes(b"n" * 999)  # torn in transit
    with pytest.raises(rep.ReplicaError, match=r"not published.*model.bin"):
        rep.publish(str(root), incoming, 200)
    assert not (root / incoming).exists() and not (root / "step-200").exists()
    assert (root / "latest.json").read_text() == before
    ck.verify(str(root / "step-100" / "checkpoint-100"))  # untouched


def test_an_interrupted_copy_is_never_a_replica(tmp_path):
    src, root = tmp_path / "src", tmp_path / "replicas"
    ckpt = make_checkpoint(src, 100, {"a.bin": b"a" * 100, "b.bin": b"b" * 100})
    incoming = root / ".incoming-100-x" / "checkpoint-100"
    incoming.mkdir(parents=True)
    (incoming / "a.bin").write_bytes(b"a" * 100)  # rsync stopped after one file, manifest not yet there
    assert rep.info(str(root))["replicas"] == [] and rep.info(str(root))["incoming"] == [".incoming-100-x"]
    with pytest.raises(rep.ReplicaError, match="no manifest"):
        rep.publish(str(root), ".incoming-100-x", 100)
    assert rep.replicas(str(root)) == []
    assert ckpt  # the source is untouched by any of this


def test_step_must_agree_with_the_manifest_and_names_are_checked(tmp_path):
    src, root = tmp_path / "src", tmp_path / "replicas"
    ckpt = make_checkpoint(src, 100, {"a.bin": b"a"})
    with pytest.raises(rep.ReplicaError, match="step 100 by its manifest, not 101"):
        rep.publish(str(root), copy_in(root, ckpt, 101), 101)
    with pytest.raises(rep.ReplicaError, match="not an .incoming"):
        rep.publish(str(root), "../elsewhere", 100)
    with pytest.raises(rep.ReplicaError, match="keep is 0"):
        rep.publish(str(root), copy_in(root, ckpt, 100), 100, keep=0)


def test_link_dest_hard_links_unchanged_shards(tmp_path):
    src, root = tmp_path / "src", tmp_path / "replicas"
    frozen = os.urandom(1 << 20)
    first = make_checkpoint(src, 100, {"frozen.bin": frozen, "head.bin": os.urandom(1024)})
    rep.publish(str(root), copy_in(root, first, 100), 100)
    # The next checkpoint has the same frozen shard under the same directory name, as sharded writers keep it.
    second = src / "next" / "checkpoint-100"
    second.mkdir(parents=True)
    (second / "frozen.bin").write_bytes(frozen)
    (second / "head.bin").write_bytes(os.urandom(1024))
    os.utime(second / "frozen.bin", (os.stat(first + "/frozen.bin").st_mtime,) * 2)
    later = os.stat(first + "/head.bin").st_mtime + 5
    os.utime(second / "head.bin", (later, later))  # rewritten: a newer time
    ck.seal(str(second), step=200)
    incoming = copy_in(root, str(second), 200, link_dest=str(root / "step-100"))
    rep.publish(str(root), incoming, 200)
    old, new = root / "step-100" / "checkpoint-100", root / "step-200" / "checkpoint-100"
    assert os.stat(old / "frozen.bin").st_ino == os.stat(new / "frozen.bin").st_ino
    assert os.stat(old / "head.bin").st_ino != os.stat(new / "head.bin").st_ino


def test_a_wrong_link_from_rsyncs_quick_check_is_caught_not_published(tmp_path):
    """rsync --link-dest trusts size and time: a rewritten file with the same size and time would be linked from the
    old replica. The manifest check on the replica node catches it; nothing is published."""
    src, root = tmp_path / "src", tmp_path / "replicas"
    first = make_checkpoint(src, 100, {"head.bin": b"a" * 1024})
    rep.publish(str(root), copy_in(root, first, 100), 100)
    second = src / "next" / "checkpoint-100"
    second.mkdir(parents=True)
    (second / "head.bin").write_bytes(b"b" * 1024)
    same = os.stat(first + "/head.bin").st_mtime
    os.utime(second / "head.bin", (same, same))
    ck.seal(str(second), step=200)
    incoming = copy_in(root, str(second), 200, link_dest=str(root / "step-100"))
    with pytest.raises(rep.ReplicaError, match="head.bin"):
        rep.publish(str(root), incoming, 200)
    assert [r["step"] for r in rep.replicas(str(root))] == [100]


def safetensors(path, step: int, size: int = 4096) -> None:
    import struct

    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]},
                         "__metadata__": {"step": str(step)}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + os.urandom(size))


def test_hold_links_the_newest_complete_checkpoint_and_seals_the_held_copy(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    for step in (100, 200):
        safetensors(job / f"step-{step:08d}.safetensors", step)
    (job / "step-00000300.safetensors").write_bytes(b"\x10\x00")  # being written: torn
    held = rep.hold(str(job), str(tmp_path / "hold"))
    assert held["step"] == 200 and held["held"].endswith("step-00000200.safetensors") and not held["is_dir"]
    assert held["files"] == [held["held"], held["held"] + ck.MANIFEST_NAME]
    assert os.stat(held["held"]).st_ino == os.stat(job / "step-00000200.safetensors").st_ino
    ck.verify(held["held"])
    assert held["incoming"].startswith(".incoming-200-")
    assert not (job / ("step-00000200.safetensors" + ck.MANIFEST_NAME)).exists()  # the job's directory untouched
    # The job deletes its copy (keep-last-N): the hold still has every byte.
    (job / "step-00000200.safetensors").unlink()
    ck.verify(held["held"])
    # Nothing newer than what is already replicated: nothing held.
    again = rep.hold(str(job), str(tmp_path / "hold"), after_step=100)
    assert again["held"] is None and again["files"] == []
