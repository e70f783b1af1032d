"""Waves of evictions: notices that arrive together become one migrate run over all their sources, with one joint
GPU reservation; each migration keeps its own ledger entry, record and outcome. The real watcher process, real
signed pushes, real ansible-runner runs on a fleet of three spot nodes and two standby nodes (four spare GPUs)."""

from __future__ import annotations

import json
import secrets
import signal
import time
from pathlib import Path

import pytest

from spot_migration import fleet as fleet_mod

from tests.fleet.test_watch import Watcher, _assert_once, _signing
from tests.helpers.fleet import Migrations, free_port, play_runner, wait_for, worker_base

SOURCES = {"node1": ("aws", "spot_interruption"), "node2": ("gcp", "preempt"), "node3": ("azure", "terminate")}


@pytest.fixture(scope="module")
def vfleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wavefleet")
    fleet = fleet_mod.up(directory, nodes=5, standby=2, base_address=worker_base(225), image=False,
                         log=lambda *_: None)
    try:
        secret_file = directory / "secret"
        secret_file.write_text(secrets.token_hex(32) + "\n")
        secret_file.chmod(0o600)
        fleet.secret_file = secret_file
        yield fleet
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


@pytest.fixture
def vwatcher(vfleet, ansible_env, tmp_path, webhook):
    state_dir = tmp_path / "watch-state"
    state_dir.mkdir()
    w = Watcher(vfleet, free_port(), vfleet.secret_file, state_dir, ansible_env, webhook[0])
    # Pushes only (no agents here, no sweep): the test decides when each notice arrives.
    w.settings = {"migrate": {"batch_window": 2.0}}
    w.received = webhook[1]
    try:
        yield w
    finally:
        w.stop()
        for node in SOURCES:
            try:
                fleet_mod.inject(vfleet.dir, node, "clear")
            except fleet_mod.FleetError:
                pass


@pytest.fixture
def vmig(vfleet, ansible_env, tmp_path):
    m = Migrations(vfleet, play_runner(vfleet, ansible_env, tmp_path), ansible_env, tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


def push_notices(fleet, watcher, nodes, tag):
    """The agents' pushes, signed, for ``nodes`` (their simulators announce the same notice)."""
    secret = _signing().load_secret(fleet.secret_file.read_text())
    for node in nodes:
        provider, kind = SOURCES[node]
        try:
            fleet_mod.inject(fleet.dir, node, kind, **({"in_seconds": 120} if provider == "aws" else {}))
        except fleet_mod.FleetError:
            pass  # a node taken away: only its (earlier) push arrives
        notice = {"evicting": True, "provider": provider, "kind": kind, "notice_id": f"{provider}-{tag}-{node}",
                  "action": "terminate", "deadline": None}
        response = watcher.push({"type": "notice", "node": node, "notice": notice,
                                 "detected_epoch": time.time()}, secret)
        assert response.status_code == 202, response.text


def all_finished(watcher, count, timeout=240):
    def done():
        rows = watcher.migrations()
        return rows if len(rows) == count and all(m["state"] in ("running", "failed") for m in rows) else None
    try:
        return wait_for(done, timeout, f"{count} migrations to finish", interval=0.5)
    except AssertionError:
        raise AssertionError(watcher.log.read_text()[-6000:]) from None


def migrate_runs(watcher) -> list[str]:
    """The migrate runs the watcher started (each has its own ansible-runner private dir)."""
    runs = watcher.state_dir / "runs"
    ids = {m["id"] for m in watcher.migrations()}
    return sorted(p.name for p in runs.iterdir()
                  if p.name.startswith("wave-") or any(p.name.startswith(i + "-") for i in ids)) if runs.exists() else []


def gpus_of(fleet, target, name):
    return json.loads((Path(fleet.node(target).paths["workloads"]) / name / "spec.json").read_text())["gpus"]


def test_three_notices_in_the_window_one_run_three_migrations_three_records(vfleet, vwatcher, vmig):
    names = {"node1": "wave-a", "node2": "wave-b", "node3": "wave-c"}
    for node, name in names.items():
        vmig.deploy(node, name)
    vwatcher.start(hosts="none")
    push_notices(vfleet, vwatcher, list(names), "three")
    rows = all_finished(vwatcher, 3)
    assert {m["state"] for m in rows} == {"running"}, rows
    # One run for the three (its ident says how many), none on their own.
    runs = migrate_runs(vwatcher)
    assert len(runs) == 1 and runs[0].startswith("wave-") and runs[0].endswith("-3"), runs
    assert "wave of 3 migrations in one run" in vwatcher.log.read_text()
    used = []
    for m in rows:
        name = names[m["source"]]
        assert m["workloads"] == [name], m
        target = _assert_once(vmig, name, m)
        assert target.startswith("standby"), (name, target)   # never onto another node of the wave
        used += [(target, g) for g in gpus_of(vfleet, target, name)]
    assert len(used) == len(set(used)) == 3, used            # one joint reservation: no GPU promised twice
    # Each migration its own ledger history, record and alert.
    records = sorted((vwatcher.state_dir / "records").glob("*.json"))
    assert sorted(p.stem for p in records) == sorted(m["id"] for m in rows)
    for path in records:
        record = json.loads(path.read_text())
        assert [r["outcome"] for r in record["migrations"]] == ["running"], record
    with vwatcher.db() as db:
        for m in rows:
            states = [r[0] for r in db.execute("SELECT state FROM transitions WHERE migration_id = ?", (m["id"],))]
            assert [s for s in ("checkpointing", "target_reserved", "transferring", "verified",
                                "resuming", "running") if s not in states] == [], (m["id"], states)
    wait_for(lambda: len(vwatcher.received) >= 3, 10, "three alerts")
    assert len(vwatcher.received) == 3


def test_an_unreachable_source_does_not_hold_back_the_others(vfleet, vwatcher, vmig):
    names = {"node1": "wunr-a", "node2": "wunr-b", "node3": "wunr-c"}
    for node, name in names.items():
        vmig.deploy(node, name)
    vwatcher.start(hosts="none")
    fleet_mod.kill_node(vfleet.dir, "node2")   # its notice came; then it went before anyone could reach it
    try:
        push_notices(vfleet, vwatcher, list(names), "unreachable")
        rows = {m["source"]: m for m in all_finished(vwatcher, 3)}
        assert rows["node2"]["state"] == "failed" and "node2" in (rows["node2"]["error"] or ""), rows["node2"]
        for node in ("node1", "node3"):
            assert rows[node]["state"] == "running", rows[node]
            _assert_once(vmig, names[node], rows[node])
        assert len(migrate_runs(vwatcher)) == 1
    finally:
        fleet_mod.restart_node(vfleet.dir, "node2")


def test_watcher_killed_mid_wave_each_workload_exactly_once(vfleet, vwatcher, vmig):
    names = {"node1": "wmid-a", "node3": "wmid-c"}
    for node, name in names.items():
        vmig.deploy(node, name)
    vwatcher.start(crash_at="target_reserved", hosts="none")
    push_notices(vfleet, vwatcher, list(names), "killed")
    vwatcher.proc.wait(120)
    assert vwatcher.proc.returncode == -signal.SIGKILL, vwatcher.log.read_text()[-3000:]
    killed = vwatcher.migrations()
    assert len(killed) == 2 and "target_reserved" in {m["state"] for m in killed}, killed
    vwatcher.start(hosts="none")
    rows = all_finished(vwatcher, 2)
    assert {m["state"] for m in rows} == {"running"}, (rows, vwatcher.log.read_text()[-4000:])
    used = []
    for m in rows:
        assert m["attempts"] >= 2, m   # each taken over by the restarted watcher, on its own
        name = names[m["source"]]
        target = _assert_once(vmig, name, m)
        used += [(target, g) for g in gpus_of(vfleet, target, name)]
    assert len(used) == len(set(used)) == 2, used
    assert len(vwatcher.migrations()) == 2
