"""The watcher: wires its parts, nothing more.

* intake (``intake.py``): signed pushes and sweep results in - verified, deduped, one migration per evicting notice;
* scheduling (``scheduler.py``): which open migrations run next, waves of notices batched into one run;
* the migration runner (``runner.py``): each run through ansible-runner or the controller, followed by its data;
* lost nodes (``lost.py``): declared lost, recovered from replicas, fenced when they come back;
* the sweep (``sweep.py``) and replication (``replication.py``).

Each part gets what it depends on by name; none reaches into another's attributes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..logs import Log
from . import actions as actions_mod
from .alerts import Alerter
from .config import WatchConfig
from .controller import Controller, ControllerError, read_token
from .intake import Intake, Rejected, to_epoch
from .ledger import Ledger
from .lost import LostNodes
from .metrics import Metrics
from .replication import Replicator
from .runner import MigrationRunner, iso
from .scheduler import Scheduler
from .server import PushServer
from .sweep import Sweeper

__all__ = ["Rejected", "Watcher", "inventory_groups", "iso", "to_epoch"]


def inventory_groups(path: str) -> dict[str, list[str]]:
    """{group: [hosts]} of an Ansible inventory (read with ansible-core's own inventory code)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    manager = InventoryManager(loader=DataLoader(), sources=[path])
    return {name: sorted(h.name for h in group.get_hosts()) for name, group in manager.groups.items()}


class Watcher:
    def __init__(self, config: WatchConfig, log: Callable[[str], None] | None = None, crash_at: str | None = None):
        if not config.inventory:
            raise ValueError("the watcher needs an inventory (--inventory or inventory: in the config)")
        self.config = config
        self.log = log or Log(fmt=config.log_format, level=config.log_level)
        secret = config.secret()
        # Nothing the watcher starts needs the secret, and ansible-runner records its environment in every run's
        # artifacts: take it out of this process's environment once read.
        os.environ.pop(config.secret_env, None)
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        self.ledger = Ledger(config.ledger_path, lease=config.lease)
        self.groups = inventory_groups(config.inventory)
        self.metrics = Metrics()
        self.actions = actions_mod.Actions(config.inventory, config.runs_dir, self.log)
        controller = None
        if config.controller.url:
            c = config.controller
            try:
                token = read_token(c.token_file, c.token_env)
            except ControllerError as exc:
                raise ValueError(str(exc)) from None
            controller = Controller(c.url, token, c.job_template, c.api_path, c.verify_ssl, c.timeout,
                                    c.poll_interval, self.log)
        self.alerter = Alerter(config.alerts.webhooks, self.ledger.claim_alert, config.alerts.retries,
                               config.alerts.timeout, self.log,
                               lambda ok: self.metrics.alerts.labels("sent" if ok else "failed").inc())
        fenced_out: set[str] = set()
        self.runner = MigrationRunner(config, self.ledger, self.actions, controller, self.alerter, self.metrics,
                                      Path(config.state_dir), fenced_out, self.log, crash_at)
        self.reservation_file = self.runner.reservation_file
        self.scheduler = Scheduler(self.ledger, self.runner.run, config.migrate.max_concurrent,
                                   config.migrate.batch_window, config.migrate.batch_max, self.runner.can_join,
                                   on_in_flight=self.metrics.in_flight.set, log=self.log, fenced_out=fenced_out,
                                   batch_window_max=config.migrate.batch_window_max)
        self.replicator = Replicator(config, self.ledger, self.actions, self.groups, self.reservation_file,
                                     self.metrics, self.log, self.scheduler.stopping,
                                     busy=lambda: bool(self.scheduler.active)) if config.replication.enabled else None
        self.lost = LostNodes(config, self.ledger, self.groups, self.actions, self.alerter, self.metrics,
                              wake=self.scheduler.kick.set, submit=self.scheduler.pool.submit, log=self.log)
        self.intake = Intake(config, self.ledger, self.groups, self.metrics, self.alerter, secret,
                             wake=self.scheduler.kick.set, on_node_back=self.lost.node_back,
                             crash_if=self.runner.crash_if, log=self.log, replicator=self.replicator)
        warnings = config.warnings
        self.metrics.at_risk.set_function(lambda: len(self.ledger.at_risk(warnings.kinds, warnings.hold)))
        self.sweeper = Sweeper(config, self.ledger, self.groups, self.actions, self.metrics, self.intake, self.lost,
                               self.scheduler.stopping, self.log)
        signing = self.intake.signing
        self.server = PushServer(config.host_port, self.intake.verify, self.intake.handle_event, self.health,
                                 self.metrics.render, self.intake.rejected, sign=lambda body: signing.sign(secret, body))
        self.threads: list[threading.Thread] = []

    def health(self) -> tuple[bool, dict]:
        try:
            open_migrations = len(self.ledger.migrations(open_only=True))
            ok = all(t.is_alive() for t in self.threads)
        except Exception as exc:  # noqa: BLE001 - reported as unhealthy
            return False, {"ok": False, "error": str(exc)}
        return ok, {"ok": ok, "open_migrations": open_migrations, **self.scheduler.status(),
                    "last_sweep": self.sweeper.last_sweep}

    def start(self) -> None:
        self.server.thread.start()
        loops = [(self.scheduler.loop, "scheduler"), (self.sweeper.run_forever, "sweeper")]
        if self.replicator is not None:
            loops.append((self.replicator.run_forever, "replicator"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        self.log(f"watching {len(self.groups.get(self.config.sweep.group, []))} spot node(s) from "
                 f"{self.config.inventory}; pushes on {self.server.url}/v1/events; ledger {self.config.ledger_path}")
        self.scheduler.kick.set()

    def stop(self, wait: float = 600.0) -> None:
        """Stop taking work; let running migrations finish (a killed watcher resumes them on its next start)."""
        self.server.shutdown()
        self.server.server_close()
        self.scheduler.stop()
        for thread in self.threads:
            thread.join(wait)
        self.actions.close()
        self.alerter.close()
        self.ledger.close()
