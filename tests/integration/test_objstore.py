"""Replicas in object storage through real rclone (module_utils/_objstore.py): here on rclone's local backend, so the
layout, the order of writes, torn uploads, tampered objects and keeping the last K are checked on every machine;
tests/fleet/test_objstore_services.py runs the same against S3-, GCS- and Azure-Blob-compatible servers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _checkpoint, _objstore

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone (make setup installs it)")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("RCLONE_CONFIG_LOCALSTORE_TYPE", "local")
    monkeypatch.setenv("RCLONE_CONFIG", str(tmp_path / "no-rclone.conf"))
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    return _objstore.Store(_agent._run, f"localstore:{bucket}/replicas"), bucket / "replicas"


def sealed_file(directory: Path, step: int, payload: bytes) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.bin"
    path.write_bytes(payload)
    _checkpoint.seal(str(path), step=step)
    return str(path)


def restore(store, tmp_path, name="job"):
    staging = tmp_path / f"staging-{len(list(tmp_path.glob('staging-*')))}"
    staging.mkdir()
    got = store.download(name, str(staging))
    return got, _checkpoint.verify(got["staged"])


def test_a_file_goes_data_manifest_latest_and_comes_back_verified(store, tmp_path):
    s, root = store
    ck = sealed_file(tmp_path / "src", 7, os.urandom(300_000))
    done = s.upload("job", ck, False, 7)
    assert done["step"] == 7 and done["bytes"] == 300_000 and done["name"] == os.path.basename(ck)
    assert json.loads((root / "job" / "latest.json").read_text())["step"] == 7
    assert (root / "job" / "step-7" / "manifest.json").exists()
    got, checked = restore(s, tmp_path)
    assert got["step"] == 7 and checked["step"] == 7 and checked["total_bytes"] == 300_000


def test_a_directory_goes_without_its_manifest_among_the_data(store, tmp_path):
    s, root = store
    ck = tmp_path / "src" / "step-00000009"
    ck.mkdir(parents=True)
    for i in range(3):
        (ck / f"shard-{i}.bin").write_bytes(os.urandom(10_000))
    _checkpoint.seal(str(ck), step=9)
    s.upload("job", str(ck), True, 9)
    assert not (root / "job" / "step-9" / "data" / ck.name / ".spot-manifest.json").exists()
    _got, checked = restore(s, tmp_path)
    assert checked["file_count"] == 3 and checked["step"] == 9


def test_an_upload_cut_short_is_never_restored(store, tmp_path):
    s, root = store
    s.upload("job", sealed_file(tmp_path / "src", 1, b"one" * 1000), False, 1)
    # Step 2's data went up, the upload died before its manifest and latest.json.
    ck2 = sealed_file(tmp_path / "src", 2, b"two" * 1000)
    s._must("data only", "copyto", ck2, s.path("job", "step-2", "data", os.path.basename(ck2)))
    assert s.steps("job") == [1, 2]
    got, checked = restore(s, tmp_path)
    assert got["step"] == 1 and checked["step"] == 1


def test_a_tampered_object_is_refused(store, tmp_path):
    s, root = store
    ck = sealed_file(tmp_path / "src", 3, os.urandom(50_000))
    s.upload("job", ck, False, 3)
    obj = root / "job" / "step-3" / "data" / os.path.basename(ck)
    data = bytearray(obj.read_bytes())
    data[100] ^= 0xFF
    obj.write_bytes(bytes(data))
    staging = tmp_path / "staging"
    staging.mkdir()
    got = s.download("job", str(staging))
    with pytest.raises(_checkpoint.CheckpointError, match="sha256"):
        _checkpoint.verify(got["staged"])


def test_only_the_last_k_stay_and_never_the_published_one_goes(store, tmp_path):
    s, _root = store
    for step in (1, 2, 3, 4):
        s.upload("job", sealed_file(tmp_path / "src", step, os.urandom(1000)), False, step, keep=2)
    assert s.steps("job") == [3, 4]
    assert s.latest("job")["step"] == 4
    assert s.latest("nothing-here") is None


@pytest.mark.parametrize("remote", ["no-colon", "-x:bucket", "s3:bucket/../other", "s3:bucket/a b", "s3:bucket;rm"])
def test_a_remote_that_is_not_a_plain_name_and_path_is_refused(remote):
    with pytest.raises(_objstore.StoreError, match="is not an rclone remote"):
        _objstore.check_remote(remote)


@pytest.mark.parametrize("program", ["", "bin/rclone", "rclone; rm", "/opt/../bin/rclone", "-rclone x"])
def test_an_rclone_program_that_is_not_a_name_or_an_absolute_path_is_refused(program):
    with pytest.raises(_objstore.StoreError, match="neither a plain name nor an absolute path"):
        _objstore.Store(_agent._run, "s3:bucket", rclone=program)


def test_without_rclone_the_error_says_what_to_install(tmp_path):
    s = _objstore.Store(_agent._run, "s3:bucket", rclone=str(tmp_path / "no-rclone"))
    with pytest.raises(_objstore.StoreError, match="install rclone"):
        s.latest("job")


def test_restore_from_store_puts_the_newest_in_place_verified_and_once(store, tmp_path):
    from ansible_collections.spot.migration.plugins.module_utils._migration import restore_from_store
    s, _bucket = store
    for step in (1, 2):
        s.upload("job", sealed_file(tmp_path / "src", step, os.urandom(3000)), False, step)
    ck_dir = tmp_path / "node" / "checkpoints" / "job"
    dry = restore_from_store(_agent._run, s.remote, "job", str(ck_dir), True, rclone=s.rclone)
    assert dry["changed"] is True and dry["restored"]["step"] == 2 and not ck_dir.exists()
    done = restore_from_store(_agent._run, s.remote, "job", str(ck_dir), False, rclone=s.rclone)
    assert done["changed"] is True and done["restored"]["checkpoint"] == str(ck_dir / "step-00000002.bin")
    assert _checkpoint.verify(done["restored"]["checkpoint"])["step"] == 2
    assert not list((tmp_path / "node" / "checkpoints" / ".spot-staging").glob("*")), "staging removed"
    again = restore_from_store(_agent._run, s.remote, "job", str(ck_dir), False, rclone=s.rclone)
    assert again["changed"] is False and again["restored"]["step"] == 2


def test_restore_from_store_refuses_a_tampered_replica_and_renames_nothing(store, tmp_path):
    from ansible_collections.spot.migration.plugins.module_utils._migration import restore_from_store
    s, bucket = store
    s.upload("job", sealed_file(tmp_path / "src", 7, os.urandom(3000)), False, 7)
    (bucket / "job" / "step-7" / "data" / "step-00000007.bin").write_bytes(os.urandom(3000))
    ck_dir = tmp_path / "node" / "checkpoints" / "job"
    with pytest.raises(_checkpoint.CheckpointError, match="does not match its manifest"):
        restore_from_store(_agent._run, s.remote, "job", str(ck_dir), False, rclone=s.rclone)
    assert not ck_dir.exists() or not list(ck_dir.glob("step-*"))
    assert not list((tmp_path / "node" / "checkpoints" / ".spot-staging").glob("*"))


@pytest.mark.parametrize("workload, message", [("nothing-here", "no replica of nothing-here"),
                                               ("../other", "is not allowed"), ("a/b", "is not allowed")])
def test_restore_from_store_names_what_is_wrong(store, tmp_path, workload, message):
    from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError, restore_from_store
    s, _bucket = store
    with pytest.raises(MigrationError, match=message):
        restore_from_store(_agent._run, s.remote, workload, str(tmp_path / "ck"), False, rclone=s.rclone)


def test_a_restore_hashes_as_it_writes_and_those_hashes_verify(store, tmp_path):
    s, _bucket = store
    ck = tmp_path / "src" / "step-00000005"
    ck.mkdir(parents=True)
    for i in range(3):
        (ck / "sub").mkdir(exist_ok=True)
        (ck / ("sub" if i else "") / f"shard-{i}.bin").write_bytes(os.urandom(5000 + i))
    _checkpoint.seal(str(ck), step=5)
    s.upload("job", str(ck), True, 5)
    staging = tmp_path / "staging"
    staging.mkdir()
    got = s.download("job", str(staging))
    assert got["hashes"] == _checkpoint.hash_files(got["staged"]), "streamed hashes are the bytes on disk"
    assert _checkpoint.verify(got["staged"], got["hashes"])["file_count"] == 3


def test_a_checkpoint_of_many_files_is_copied_in_one_call_and_hashed_after(store, tmp_path):
    s, _bucket = store
    ck = tmp_path / "src" / "step-00000006"
    ck.mkdir(parents=True)
    for i in range(_objstore.STREAM_MAX_FILES + 1):
        (ck / f"part-{i:03d}.bin").write_bytes(os.urandom(100))
    _checkpoint.seal(str(ck), step=6)
    s.upload("job", str(ck), True, 6)
    staging = tmp_path / "staging"
    staging.mkdir()
    got = s.download("job", str(staging))
    assert got["hashes"] is None and _checkpoint.verify(got["staged"])["file_count"] == _objstore.STREAM_MAX_FILES + 1


@pytest.mark.parametrize("rel", ["../escape.bin", "/etc/passwd", "a/../../b", "a//b"])
def test_a_stored_manifest_naming_a_path_outside_the_checkpoint_is_refused(store, tmp_path, rel):
    s, bucket = store
    ck = tmp_path / "src" / "step-00000007"
    ck.mkdir(parents=True)
    (ck / "ok.bin").write_bytes(b"x" * 10)
    _checkpoint.seal(str(ck), step=7)
    s.upload("job", str(ck), True, 7)
    manifest = bucket / "job" / "step-7" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"][rel] = data["files"].pop("ok.bin")
    manifest.write_text(json.dumps(data))
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(_objstore.StoreError, match="not a file of step-00000007: refused"):
        s.download("job", str(staging))
    assert not (tmp_path / "escape.bin").exists() and not list(staging.rglob("*.bin"))
