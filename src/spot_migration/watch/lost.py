"""Lost nodes: a spot node whose agent is silent and that probes cannot reach, both for longer than ``lost.grace``,
is declared lost (fenced, its workloads resumed from their replicas by a migration of kind ``lost``); when it answers
again, its stale copies are stopped and fenced before it counts as usable."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import logs
from . import actions as actions_mod
from .alerts import Alerter
from .config import WatchConfig
from .ledger import Ledger
from .metrics import Metrics


class LostNodes:
    def __init__(self, config: WatchConfig, ledger: Ledger, groups: dict[str, list[str]], actions: actions_mod.Actions,
                 alerter: Alerter, metrics: Metrics, wake: Callable[[], None], submit: Callable[..., Any],
                 log: Callable[[str], None]):
        self.config, self.ledger, self.groups, self.actions = config, ledger, groups, actions
        self.alerter, self.metrics, self.wake, self.submit, self.log = alerter, metrics, wake, submit, log
        self.lock = threading.Lock()
        self.returning: set[str] = set()

    def check_lost(self, now: float | None = None) -> list[str]:
        """Spot nodes whose agent has been silent AND that probes could not reach, both for longer than
        ``lost.grace``: declared lost, fenced, and their workloads resumed from the replicas. A node that is merely
        slow answers a probe or a heartbeat within the grace period and is left alone."""
        if not self.config.lost.enabled:
            return []
        now = time.time() if now is None else now
        grace = float(self.config.lost.grace)
        health = self.ledger.health()
        heard = {n["node"]: max(n["last_heartbeat_at"] or 0, n["last_probe_at"] or 0) for n in self.ledger.nodes()}
        declared = []
        for node in self.groups.get(self.config.sweep.group, []):
            h = health.get(node) or {}
            since = h.get("unreachable_since")
            if since is None or h.get("lost_at") is not None:
                continue
            last_contact = max(heard.get(node, 0.0), 0.0)
            if now - since >= grace and now - last_contact >= grace and self.ledger.declare_lost(node):
                declared.append(node)
                self._lost(node, now)
        self.metrics.lost.set(len(self.ledger.lost_nodes()))
        return declared

    def _lost(self, node: str, now: float) -> None:
        workloads = self.ledger.workloads(node=node)
        names = ", ".join(w["name"] for w in workloads) or "no known workloads"
        self.log(logs.warning(f"{node} is LOST: agent silent and unreachable for more than {self.config.lost.grace:.0f} s ({names})"))
        self.alerter.alert(f"lost:{node}:{now:.0f}", f"{node} was lost without a notice; resuming {names} from replicas",
                           node=node, kind="lost", workloads=[w["name"] for w in workloads])
        if not workloads or not self.config.migrate.enabled:
            return
        notice = {"notice_id": f"lost-{node}-{now:.0f}", "evicting": True, "kind": "lost", "provider": "none",
                  "action": "lost", "deadline": None}
        self.ledger.record_notice(node, notice, "lost", now, notice_at=now)
        created, _migration_id = self.ledger.open_migration(notice["notice_id"], node, now, now)
        if created:
            self.wake()

    def node_back(self, node: str, via: str) -> None:
        """A lost node answers again: before anything else, stop and fence the copies it still has."""
        with self.lock:
            if node in self.returning:
                return
            self.returning.add(node)
        self.log(f"{node} is back ({via}); stopping the fenced copies there first")
        self.submit(self._unfence, node)

    def _unfence(self, node: str) -> None:
        try:
            fences = self.ledger.fences(node)
            plays = [{"name": "Fence the stale copies", "hosts": node, "gather_facts": False, "tasks": [
                {"name": "Stop and fence the stale copy", "loop": [f["workload"] for f in fences],
                 "spot.migration.workload": {"name": "{{ item }}", "state": "fenced",
                                             "fence_id": "{{ fence_ids[item] }}", "stop_timeout": 5,
                                             "runtime": "{{ runtimes[item] | default('process') }}",
                                             "workload_root": "{{ spot_workload_root | default(omit) }}"}}],
                "vars": {"fence_ids": {f["workload"]: f["migration_id"] or "lost" for f in fences},
                         "runtimes": {w["name"]: w["spec"].get("runtime", "process") for w in self.ledger.workloads()}}}]
            rc, private = self.actions.run(f"unfence-{node}-{time.monotonic_ns()}", plays)
            if rc == 0:
                for f in fences:
                    self.ledger.fence_applied(node, f["workload"])
                self.ledger.node_returned(node)
                self.log(f"{node}: {len(fences)} stale copy(ies) stopped and fenced; the node is usable again")
                shutil.rmtree(private, ignore_errors=True)
            else:
                self.log(logs.warning(f"{node}: fencing its stale copies failed (rc {rc}); will try again when it is seen next"))
        finally:
            with self.lock:
                self.returning.discard(node)
