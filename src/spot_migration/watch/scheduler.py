"""Scheduling: which open migrations run next, and which of them run together as one wave.

Clouds reclaim spot capacity in waves (many nodes of one pool within a second or two), and the agents see them over
their poll interval. A wave's notices become one migrate run over all their sources: the run starts once no new
notice has come for ``batch_window`` seconds (a quiet period, restarted by each notice that joins), and at the latest
``batch_window_max`` seconds after the first - one ``ansible-playbook`` process instead of one each, one joint GPU
reservation (no GPU promised twice), hosts in parallel. The wait costs the workloads nothing: their agents have
already asked them for the emergency checkpoint. The ledger
still holds, fences and records each migration on its own. ``max_concurrent`` bounds the runs in flight (each
costs the controller a process and its forks), ``batch_max`` the migrations in one run.

A migration that cannot share a run goes alone: one resumed after a watcher died (it has its own resume point), one
recovering a lost node (another playbook), and in AWX mode every one (one job per migration).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import logs
from .ledger import Fenced, Ledger, LedgerError

Claimed = list[tuple[str, int]]  # [(migration id, fence)] of one run


def batches(claimable: list[dict], batch_max: int, can_join: Callable[[dict], bool]) -> list[list[dict]]:
    """Group open migrations (oldest first) into runs: those that ``can_join`` share runs of at most ``batch_max``
    (a source at most once per run), the others run alone. The runs come oldest first, by their first migration."""
    runs: list[list[dict]] = []
    open_wave: list[dict] | None = None
    for row in claimable:
        if not can_join(row):
            runs.append([row])
            continue
        if open_wave is None or len(open_wave) >= batch_max or any(r["source"] == row["source"] for r in open_wave):
            open_wave = [row]
            runs.append(open_wave)
        else:
            open_wave.append(row)
    return runs


class Scheduler:
    """Claims open migrations from the ledger and hands them, in runs, to ``run(claimed, wave)`` on a pool of
    ``max_concurrent`` threads; renews the leases of those in flight and notes the ones another watcher took
    (``fenced_out``), which their runs check to stop. ``wave`` is true for a run of migrations that ``can_join``
    (even a wave of one), false for one that must run alone."""

    def __init__(self, ledger: Ledger, run: Callable[[Claimed, bool], None], max_concurrent: int, batch_window: float,
                 batch_max: int, can_join: Callable[[dict], bool], on_in_flight: Callable[[int], None] | None = None,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                 fenced_out: set[str] | None = None, batch_window_max: float | None = None):
        self.ledger = ledger
        self.run = run
        self.max_concurrent = int(max_concurrent)
        self.batch_window = float(batch_window)
        self.batch_window_max = max(self.batch_window, float(batch_window if batch_window_max is None else batch_window_max))
        self.batch_max = int(batch_max)
        self.can_join = can_join
        self.on_in_flight = on_in_flight or (lambda n: None)
        self.log = log
        self.clock = clock
        self.active: dict[str, int] = {}
        self.fenced_out: set[str] = fenced_out if fenced_out is not None else set()
        self.runs = 0
        self.lock = threading.Lock()
        self.kick = threading.Event()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=self.max_concurrent, thread_name_prefix="migrate")
        self._waiting_since: float | None = None  # when the first fresh migration of the wave being gathered came
        self._last_arrival = 0.0                  # when the latest one joined it
        self._gathered: set[str] = set()

    # ------------------------------------------------------------------ the loop
    def loop(self) -> None:
        while not self.stopping.is_set():
            self.kick.wait(self._timeout())
            self.kick.clear()
            if not self.stopping.is_set():
                self.tick()

    def _timeout(self) -> float:
        if self._waiting_since is None:
            return 0.5
        due = min(self._last_arrival + self.batch_window, self._waiting_since + self.batch_window_max)
        return max(0.01, min(0.5, due - self.clock()))

    def renew(self) -> None:
        with self.lock:
            for migration_id, fence in list(self.active.items()):
                try:
                    self.ledger.renew(migration_id, fence)
                except Fenced:
                    self.fenced_out.add(migration_id)
                except LedgerError:
                    pass  # it has just finished

    def tick(self) -> list[Claimed]:
        """One round: renew leases, then claim and start what may start now. Returns the runs started."""
        self.renew()
        with self.lock:
            free = self.max_concurrent - self.runs
        if free <= 0:
            return []
        claimable = [m for m in self.ledger.claimable() if m["id"] not in self.active]
        if not claimable:
            self._waiting_since, self._gathered = None, set()
            return []
        # The batching window: a wave's notices come over a second or so; they wait until none has come for
        # batch_window (each one that joins restarts it), batch_window_max after the first at the latest.
        fresh = [m for m in claimable if self.can_join(m)]
        if fresh and self.batch_window > 0:
            now = self.clock()
            ids = {m["id"] for m in fresh}
            if self._waiting_since is None:
                self._waiting_since = self._last_arrival = now
            elif ids - self._gathered:
                self._last_arrival = now
            self._gathered = ids
            quiet = now - self._last_arrival >= self.batch_window
            overdue = now - self._waiting_since >= self.batch_window_max
            if not quiet and not overdue and len(fresh) < self.batch_max:
                # Meanwhile, what may not join a wave starts at once.
                claimable = [m for m in claimable if not self.can_join(m)]
                if not claimable:
                    return []
            else:
                self._waiting_since, self._gathered = None, set()
        started = []
        for group in batches(claimable, self.batch_max, self.can_join)[:free]:
            if self.stopping.is_set():
                break
            wave = all(self.can_join(m) for m in group)
            claimed = self._claim(group)
            if claimed:
                started.append(claimed)
                with self.lock:
                    self.runs += 1
                self.pool.submit(self._run, claimed, wave)
        self.on_in_flight(len(self.active))
        return started

    def _claim(self, group: list[dict]) -> Claimed:
        claimed = []
        for m in group:
            try:
                fence = self.ledger.claim(m["id"])
            except Fenced:
                continue
            with self.lock:
                self.active[m["id"]] = fence
                self.fenced_out.discard(m["id"])
            claimed.append((m["id"], fence))
        return claimed

    def _run(self, claimed: Claimed, wave: bool) -> None:
        try:
            self.run(claimed, wave)
        except Exception as exc:  # noqa: BLE001 - the runner reports its own failures; this is the last resort
            self.log(logs.error(f"run of {', '.join(m for m, _ in claimed)}: {type(exc).__name__}: {exc}"))
        finally:
            with self.lock:
                for migration_id, _fence in claimed:
                    self.active.pop(migration_id, None)
                self.runs -= 1
            self.on_in_flight(len(self.active))
            self.kick.set()

    def stop(self) -> None:
        self.stopping.set()
        self.kick.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"active": sorted(self.active), "runs": self.runs}
