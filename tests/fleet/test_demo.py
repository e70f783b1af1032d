"""``make demo`` in its short form (same code path): the report says the story happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from spot_migration import fleet as fleet_mod

CLI = str(Path(sys.executable).parent / "spot-migration")


def test_demo_quick_report(tmp_path, ansible_env):
    workdir = tmp_path / "demo"
    result = subprocess.run([CLI, "demo", "--quick", "--dir", str(workdir), "--checkpoint-size", "4"], env=ansible_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=280, check=False)
    assert result.returncode == 0, result.stdout[-6000:]
    report = json.loads((workdir / "report.json").read_text())
    row = report["migrations"][0]
    for key in ("workload", "source", "target", "provider", "notice_at", "detected_at", "checkpoint_verified_at",
                "transferred_at", "resumed_at", "checkpoint_step", "resumed_step", "bytes"):
        assert row[key] is not None, key
    assert row["source"] != row["target"]
    assert row["resumed_step"] == row["checkpoint_step"] > 0
    assert row["bytes"] >= 4 * 2**20
    assert row["detection_s"] < 2.0
    assert (workdir / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Summary" in result.stdout and "Demo finished" in result.stdout
    # Torn down: no process of the demo's fleet is left.
    fleet = fleet_mod.Fleet.load(workdir / "fleet")
    for node in fleet.nodes:
        assert not fleet_mod._alive(node.sshd_pid) and not fleet_mod._alive(node.metadata_pid)
        assert all(not fleet_mod._alive(pid, ticks) for pid, ticks in fleet_mod.agent_pids(node))
