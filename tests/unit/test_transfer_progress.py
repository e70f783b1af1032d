"""A long transfer's progress: rsync's --info=progress2 parsed, written to the progress file, shown by the action
plugin; a real rsync streamed line by line."""

from __future__ import annotations

import json
import shutil

import pytest

from ansible_collections.spot.migration.plugins.action.migration_source import progress_line
from ansible_collections.spot.migration.plugins.module_utils._migration import ProgressFile
from ansible_collections.spot.migration.plugins.module_utils._transfer import parse_progress, stream_command


@pytest.mark.parametrize("line, parsed", [
    ("    536,870,912  50%  128.00MB/s    0:00:04 (xfr#1, to-chk=1/2)", (536870912, 50, "128.00MB/s")),
    ("          1,024 100%    1.00kB/s    0:00:00", (1024, 100, "1.00kB/s")),
    ("sending incremental file list", None),
    ("", None),
])
def test_rsync_progress2_lines(line, parsed):
    assert parse_progress(line) == parsed


def test_progress_file_is_throttled_written_whole_and_removed(tmp_path):
    now = [100.0]
    progress = ProgressFile(str(tmp_path / "p.json"), every=1.0, clock=lambda: now[0])
    progress.workload = "train"
    progress("/ck/step-5", 10, 100, 10, "1MB/s")
    now[0] += 0.2
    progress("/ck/step-5", 20, 100, 20, "1MB/s")  # within the second: not written
    data = json.loads((tmp_path / "p.json").read_text())
    assert (data["workload"], data["bytes"], data["percent"]) == ("train", 10, 10)
    progress("/ck/step-5", 100, 100, 100, "1MB/s")  # the end is always written
    assert json.loads((tmp_path / "p.json").read_text())["percent"] == 100
    progress.close()
    assert not (tmp_path / "p.json").exists()
    progress.close()  # twice is fine


def test_progress_line():
    line = progress_line("node1", {"workload": "train", "bytes": 512 * 2**20, "total": 1024 * 2**20, "percent": 50,
                                   "rate": "100.00MB/s"})
    assert line == "node1: train 512/1024 MiB (50%, 100.00MB/s)"


def test_a_real_rsync_streams_its_progress(tmp_path):
    assert shutil.which("rsync")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"\0" * (8 * 2**20))
    seen = []
    rc, out, err = stream_command(["rsync", "--archive", "--whole-file", "--info=progress2", "--no-inc-recursive",
                                   "--bwlimit=20000", f"{src}/", f"{tmp_path / 'dst'}/"],
                                  lambda line: seen.append(parse_progress(line)))
    assert rc == 0, err
    totals = [s for s in seen if s]
    assert totals and totals[-1][0] == 8 * 2**20 and totals[-1][1] == 100
    assert (tmp_path / "dst" / "a.bin").stat().st_size == 8 * 2**20
    rc, _out, err = stream_command(["rsync", str(tmp_path / "missing"), str(tmp_path / "x")], lambda line: None)
    assert rc != 0 and "missing" in err
