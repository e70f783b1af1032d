"""Intake: what comes in - signed pushes from the agents (heartbeats, notices) and the probe sweep's results.

Verifies (signature, timestamp, nonce), dedupes (one notice stored once, however often it arrives), and opens one
migration per evicting notice on a watched node; then wakes the scheduler. Knows nothing of how migrations run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import logs, module_utils
from .alerts import Alerter
from .config import WatchConfig
from .ledger import Ledger
from .metrics import Metrics


class Rejected(PermissionError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def to_epoch(value: Any) -> float | None:
    """Unix time from an ISO 8601 string or a number (None when absent or unreadable)."""
    if value in (None, ""):
        return None
    try:
        return float(module_utils("_notice").parse_iso8601(value)) if isinstance(value, str) else float(value)
    except Exception:  # noqa: BLE001 - a bad timestamp from a node is dropped, not fatal
        return None


class Intake:
    def __init__(self, config: WatchConfig, ledger: Ledger, groups: dict[str, list[str]], metrics: Metrics,
                 alerter: Alerter, secret: bytes, wake: Callable[[], None], on_node_back: Callable[[str, str], None],
                 crash_if: Callable[[str], None], log: Callable[[str], None], replicator: Any = None):
        self.config, self.ledger, self.groups, self.metrics, self.alerter = config, ledger, groups, metrics, alerter
        self.signing = module_utils("_signing")
        self.secret = secret
        self.wake, self.on_node_back, self.crash_if, self.log = wake, on_node_back, crash_if, log
        self.replicator = replicator

    def verify(self, headers: dict, body: bytes) -> None:
        try:
            self.signing.verify(self.secret, headers, body, self.ledger.seen_nonce, max_skew=self.config.max_skew)
        except self.signing.SignatureError as exc:
            raise Rejected(exc.reason, str(exc)) from None

    def rejected(self, reason: str, client: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self.log(logs.warning(f"push from {client} refused: {reason}"))

    def handle_event(self, event: dict) -> dict:
        node = event["node"]
        if node not in self.groups.get("all", []):
            raise LookupError(f"node {node!r} is not in the inventory {self.config.inventory}")
        if event["type"] == "heartbeat":
            self.node_seen(node, "agent", bool(event.get("blind")), event.get("error"), event.get("provider"),
                           event.get("agent_version"))
            answer: dict[str, Any] = {"accepted": True}
            # Copies on this node that were resumed elsewhere while it was lost: its agent stops them at once.
            fence = [{"workload": f["workload"], "fence_id": f["migration_id"]} for f in self.ledger.fences(node)
                     if f["applied_at"] is None]
            if fence:
                answer["fence"] = fence
            if self.replicator is not None:
                # Agents that replicate themselves report their replicas and get the current plan back.
                self.replicator.agent_report(node, event)
                answer["replicate"] = self.replicator.agent_plan(node)
            return answer
        notice = event.get("notice")
        if not isinstance(notice, dict) or not notice.get("notice_id"):
            raise LookupError("notice event without a notice_id")
        self.node_seen(node, "agent", False, None, notice.get("provider"), None)
        return self.on_notice(node, notice, "push", to_epoch(event.get("detected_epoch") or event.get("detected_at")),
                              to_epoch(event.get("signalled_epoch") or event.get("signalled_at")))

    def node_seen(self, node: str, via: str, blind: bool, error: str | None, provider: str | None,
                  agent_version: str | None) -> None:
        was_blind, is_blind = self.ledger.heartbeat(node, via, blind, error, provider, agent_version)
        if is_blind and not was_blind:
            since = next((n["blind_since"] for n in self.ledger.nodes() if n["node"] == node), time.time())
            self.alerter.alert(f"blind:{node}:{since:.0f}", f"{node} cannot read its metadata service (blind): {error}",
                               node=node, error=error, kind="blind")
        elif was_blind and not is_blind:
            self.log(f"{node} sees its metadata service again")
        self.metrics.blind.set(sum(1 for n in self.ledger.nodes() if n["blind"]))
        if node in self.ledger.lost_nodes():
            self.on_node_back(node, via)

    def on_notice(self, node: str, notice: dict, via: str, detected_at: float | None = None,
                  signalled_at: float | None = None) -> dict:
        """A notice from an agent or the sweep: store once, open a migration for an evicting one."""
        received = time.time()
        self.metrics.deliveries.labels(via).inc()
        new, row = self.ledger.record_notice(node, notice, via, received, notice_at=detected_at or received,
                                             signalled_at=signalled_at)
        migration_id = row.get("migration_id")
        if new:
            self.metrics.notices.labels(notice.get("provider") or "none", notice.get("kind") or "none", via).inc()
            self.metrics.detection.labels(via).observe(max(0.0, received - (detected_at or received)))
            self.log(f"notice {notice['notice_id']} from {node} via {via}: {notice.get('provider')} {notice.get('kind')}"
                     f" (evicting: {notice.get('evicting')}, deadline {notice.get('deadline')})")
        warning = not notice.get("evicting") and notice.get("kind") in self.config.warnings.kinds
        if warning and new and node in self.groups.get("spot", []):
            self.warned(node, notice)
        moves = notice.get("evicting") or (warning and self.config.warnings.migrate)
        if moves and node in self.groups.get("spot", []) and not migration_id:
            if not self.config.migrate.enabled:
                if new:
                    self.alerter.alert(f"notice:{notice['notice_id']}", f"{node} is being taken away ({notice.get('kind')},"
                                       f" deadline {notice.get('deadline')}); migrations are off (migrate.enabled: false)",
                                       node=node, notice_id=notice["notice_id"], kind="notice")
                return {"accepted": True, "duplicate": not new, "migration_id": None}
            created, migration_id = self.ledger.open_migration(notice["notice_id"], node, detected_at or received, received)
            if created:
                self.log(f"migration {migration_id}: {node} is being taken away; moving its workloads" if
                         notice.get("evicting") else f"migration {migration_id}: {node} is at risk "
                         f"({notice.get('kind')}) and warnings.migrate is on; moving its workloads")
                self.crash_if("noticed")
                self.wake()
        return {"accepted": True, "duplicate": not new, "migration_id": migration_id}

    def warned(self, node: str, notice: dict) -> None:
        """An early warning for ``node`` (first delivery): get ready - a replication round at once, which copies the
        newest checkpoints and keeps a target reserved for each workload - and say so; no migration unless
        ``warnings.migrate``."""
        w = self.config.warnings
        what = f"{node} is at risk ({notice.get('provider')} {notice.get('kind')}, notice {notice['notice_id']}): "
        if w.migrate:
            what += "migrating its workloads (warnings.migrate)"
        elif w.prestage and self.replicator is not None:
            self.replicator.prestage(node, notice["notice_id"])
            what += "replicating its newest checkpoints now, a target reserved for each workload; no migration"
        elif w.prestage:
            what += "nothing to pre-stage with replication off (replication.enabled: false); no migration"
        else:
            what += "no migration, nothing pre-staged (warnings.prestage: false)"
        self.alerter.alert(f"warning:{notice['notice_id']}", what, node=node, notice_id=notice["notice_id"],
                           kind="at_risk")
