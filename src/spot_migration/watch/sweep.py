"""The fallback probe sweep: nodes whose agents are silent (or all, or none) probed in one run every
``sweep.interval`` seconds; what they report goes through the intake like a push, and lost nodes are checked after."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .. import logs
from . import actions as actions_mod
from .config import WatchConfig
from .intake import Intake, to_epoch
from .ledger import Ledger
from .lost import LostNodes
from .metrics import Metrics


class Sweeper:
    def __init__(self, config: WatchConfig, ledger: Ledger, groups: dict[str, list[str]], actions: actions_mod.Actions,
                 metrics: Metrics, intake: Intake, lost: LostNodes, stopping: threading.Event,
                 log: Callable[[str], None]):
        self.config, self.ledger, self.groups, self.actions, self.metrics = config, ledger, groups, actions, metrics
        self.intake, self.lost, self.stopping, self.log = intake, lost, stopping, log
        self.last_sweep: dict[str, Any] = {}

    def sweep_hosts(self) -> list[str]:
        spot = self.groups.get(self.config.sweep.group, [])
        if self.config.sweep.hosts == "none":
            return []
        if self.config.sweep.hosts == "all":
            return spot
        now = time.time()
        seen = {n["node"]: n["last_heartbeat_at"] for n in self.ledger.nodes()}
        silent = [h for h in spot if not seen.get(h) or now - seen[h] > self.config.heartbeat_timeout]
        self.metrics.silent.set(len(silent))
        return silent

    def sweep_once(self) -> dict[str, Any]:
        hosts = self.sweep_hosts()
        if not hosts:
            return {"hosts": [], "seconds": 0.0}

        def on_result(host: str, res: dict) -> None:
            unreachable = str(res.get("error") or "").startswith("unreachable")
            self.ledger.probe_result(host, not unreachable)
            if unreachable and self.config.lost.enabled:
                return  # not heard from: neither blind nor quiet; check_lost decides after the grace period
            blind = bool(res.get("error"))
            self.intake.node_seen(host, "sweep", blind, res.get("error"), res.get("provider"), None)
            if not blind and res.get("kind") not in (None, "none") and res.get("notice_id"):
                notice = {k: v for k, v in res.items() if k not in ("changed", "invocation", "notices", "elapsed")}
                self.intake.on_notice(host, notice, "sweep", to_epoch(res.get("checked_at")))

        rc, seconds = actions_mod.sweep(self.actions, hosts, self.config.sweep.timeout, on_result,
                                        forks=self.config.sweep.forks)
        self.metrics.sweeps.labels("ok" if rc == 0 else "failed").inc()
        self.lost.check_lost()
        self.last_sweep = {"hosts": hosts, "seconds": round(seconds, 2), "rc": rc, "at": time.time()}
        return self.last_sweep

    def run_forever(self) -> None:
        while not self.stopping.wait(float(self.config.sweep.interval)):
            try:
                self.sweep_once()
            except Exception as exc:  # noqa: BLE001 - a failed sweep is reported and retried next time
                self.metrics.sweeps.labels("error").inc()
                self.log(logs.error(f"sweep failed: {type(exc).__name__}: {exc}"))
