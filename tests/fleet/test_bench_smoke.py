"""``make bench`` in its smoke form (tiny sizes, short periods, same code): every part runs, and the report has
every headline figure with its machine and date. The figures themselves are not judged here (bench/ is for that)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from spot_migration import fleet as fleet_mod

ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ("p1_detect_p95_s", "p2_checkpoint_on_target_s", "p3_speedup_vs_runbook", "p4_transfer_vs_rsync",
            "p5_eight_vs_one", "p6_sweep_32_nodes_s", "p7_prestaged_notice_to_running_s")


@pytest.mark.timeout(900)
def test_bench_smoke(tmp_path, ansible_env):
    out = tmp_path / "results"
    # The benchmarks make their work directories under TMPDIR: a directory of this test's own, so that teardown finds
    # every fleet they start. A short path: SSH control sockets live under it and a socket path has at most 108 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="spot-bs-", dir="/tmp"))
    env = dict(ansible_env, TMPDIR=str(scratch))
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke", "--out", str(out),
                             "--net", "70"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = proc.communicate(timeout=840)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for state in scratch.rglob(fleet_mod.STATE_FILE):
            fleet_mod.down(state.parent, log=lambda *_: None)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # watchers and playbooks a killed part left behind
        except ProcessLookupError:
            pass
        shutil.rmtree(scratch, ignore_errors=True)
    assert proc.returncode == 0, output[-6000:]
    report = json.loads((out / "results.json").read_text())
    assert report["smoke"] is True
    for key in HEADLINE:
        figure = report[key]
        assert isinstance(figure["value"], (int, float)) and figure["value"] > 0, (key, figure)
        assert figure["machine"] == report["machine"] and figure["date"] == report["date"], key
    # Every part's raw output came from this run, and its detail reached the tables.
    assert report["parts"]["watch"]["detection"]["agents"]["signalled"]["n"] == 3
    assert report["parts"]["watch"]["evictions"]["eight"]["running"] == 2
    assert set(report["parts"]["watch"]["sweep"]) == {"2", "4"}
    assert "4 MiB" in report["parts"]["migration"]["sizes"]
    assert report["parts"]["prevention"]["loss"]["n"] == 1
    assert report["parts"]["objstore"]["services"]["s3"]["size_mib"] == 4
    for key in ("p13_store_upload_vs_rclone_copy", "p14_store_restore_vs_rclone_copy"):
        assert report[key]["value"] > 0, (key, report[key])
    text = (out / "results.md").read_text()
    assert "SMOKE RUN" in text and all(f"`{key}`" in text for key in HEADLINE)
    for name in ("detection", "migration", "scaling"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
