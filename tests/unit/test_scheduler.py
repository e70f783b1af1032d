"""The watcher's scheduler on a real ledger: waves of notices become one run, the batching window, lone runs, the
bound on runs in flight, claims another watcher holds."""

from __future__ import annotations

import threading

import pytest

from spot_migration.watch.ledger import Ledger
from spot_migration.watch.scheduler import Scheduler, batches


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def row(mid, source, attempts=0):
    return {"id": mid, "source": source, "attempts": attempts}


def test_batches_group_fresh_ones_and_keep_the_others_alone():
    rows = [row("a", "n1"), row("b", "n2", attempts=1), row("c", "n3"), row("d", "n1"), row("e", "n4")]
    runs = batches(rows, batch_max=16, can_join=lambda m: m["attempts"] == 0)
    # b runs alone; d's source is already in the first wave, so it opens the next one (one source once per run).
    assert [[m["id"] for m in r] for r in runs] == [["a", "c"], ["b"], ["d", "e"]]


def test_batches_respect_batch_max():
    rows = [row(str(i), f"n{i}") for i in range(5)]
    assert [len(r) for r in batches(rows, 2, lambda m: True)] == [2, 2, 1]
    assert [len(r) for r in batches(rows, 1, lambda m: True)] == [1] * 5


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(str(tmp_path / "ledger.sqlite"), lease=15)
    yield led
    led.close()


def open_on(ledger, source):
    ledger.record_notice(source, {"notice_id": f"n-{source}", "evicting": True, "kind": "spot_interruption",
                                  "provider": "aws"}, "push", 1.0, notice_at=1.0)
    return ledger.open_migration(f"n-{source}", source, 1.0, 1.0)[1]


def scheduler(ledger, clock, window=0.3, batch_max=16, max_concurrent=4, window_max=2.0):
    started, release = [], threading.Event()

    def run(claimed, wave):
        started.append(([m for m, _fence in claimed], wave))
        release.wait(10)

    s = Scheduler(ledger, run, max_concurrent, window, batch_max, lambda m: m["attempts"] == 0, clock=clock,
                  batch_window_max=window_max,
                  log=lambda msg: None)
    s.release = release
    s.started = started
    return s


def test_notices_inside_the_window_become_one_run(ledger):
    clock = Clock()
    s = scheduler(ledger, clock)
    try:
        first = open_on(ledger, "node1")
        assert s.tick() == []               # the window opens: the first waits for the rest of the wave
        clock.now += 0.1
        second, third = open_on(ledger, "node2"), open_on(ledger, "node3")
        assert s.tick() == []               # they join: the quiet period (0.3 s) starts again
        clock.now += 0.25                   # 0.35 s after the first, 0.25 s after the latest
        assert s.tick() == []
        clock.now += 0.06                   # 0.31 s without a new notice
        runs = s.tick()
        assert [[m for m, _fence in r] for r in runs] == [[first, second, third]]
        assert all(fence == 1 for _mid, fence in runs[0])
        assert s.status() == {"active": sorted([first, second, third]), "runs": 1}
        # Claimed: nothing more to start, and the next notice opens a new window.
        assert s.tick() == []
    finally:
        s.release.set()
        s.stop()
    assert s.started == [([first, second, third], True)]
    assert s.status() == {"active": [], "runs": 0}


def test_a_trickling_wave_waits_no_longer_than_the_window_max(ledger):
    clock = Clock()
    s = scheduler(ledger, clock, window=0.3, window_max=1.0)
    try:
        ids = [open_on(ledger, "node0")]
        assert s.tick() == []
        for i in range(1, 4):               # one more every 0.25 s: the quiet period never ends
            clock.now += 0.25
            ids.append(open_on(ledger, f"node{i}"))
            assert s.tick() == [], i
            assert 0.01 <= s._timeout() <= 0.3
        clock.now += 0.25                   # 1.0 s after the first: the run starts with what has come
        ids.append(open_on(ledger, "node4"))
        runs = s.tick()
        assert [[m for m, _fence in r] for r in runs] == [ids]
    finally:
        s.release.set()
        s.stop()


def test_a_full_wave_does_not_wait_for_the_window(ledger):
    clock = Clock()
    s = scheduler(ledger, clock, batch_max=2)
    try:
        ids = [open_on(ledger, f"node{i}") for i in range(3)]
        runs = s.tick()                     # batch_max reached: no waiting
        assert [[m for m, _fence in r] for r in runs] == [ids[:2], ids[2:]]
    finally:
        s.release.set()
        s.stop()


def test_no_window_runs_at_once_and_lone_migrations_never_wait(ledger):
    clock = Clock()
    s = scheduler(ledger, clock, window=0)
    try:
        first = open_on(ledger, "node1")
        assert [[m for m, _fence in r] for r in s.tick()] == [[first]]
    finally:
        s.release.set()
        s.stop()
    # A migration a dead watcher held (attempts > 0) goes at once and alone, even inside a window.
    resumed = open_on(ledger, "node2")
    dead = Ledger(ledger.path, owner="dead-watcher", lease=15)
    dead.pid, dead.ticks = 2 ** 22 + 7, "gone"   # a watcher on this host whose process is gone holds nothing
    dead.claim(resumed)
    dead.close()
    clock2 = Clock()
    s2 = scheduler(ledger, clock2)
    try:
        fresh = open_on(ledger, "node3")
        runs = s2.tick()
        assert [[m for m, _fence in r] for r in runs] == [[resumed]]
        assert s2.tick() == []              # node3's window still open
        clock2.now += 1
        assert [[m for m, _fence in r] for r in s2.tick()] == [[fresh]]
    finally:
        s2.release.set()
        s2.stop()
    assert s2.started == [([resumed], False), ([fresh], True)]


def test_runs_in_flight_are_bounded(ledger):
    clock = Clock()
    s = scheduler(ledger, clock, window=0, batch_max=1, max_concurrent=2)
    try:
        ids = [open_on(ledger, f"node{i}") for i in range(3)]
        assert [[m for m, _fence in r] for r in s.tick()] == [ids[:1], ids[1:2]]
        assert s.tick() == []               # two runs in flight: the third waits
        s.release.set()
        threading.Event().wait(0.3)
        assert [[m for m, _fence in r] for r in s.tick()] == [ids[2:]]
    finally:
        s.release.set()
        s.stop()
