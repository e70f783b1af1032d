"""The watcher: wires the push endpoint, the ledger, the probe sweep, the migration runs and the alerts.

Sources (agent pushes, the sweep) normalise; the ledger dedupes and decides; actions (ansible-runner) act.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import module_utils
from . import actions as actions_mod
from .alerts import Alerter
from .config import WatchConfig
from .controller import Controller, ControllerError, read_token
from .ledger import ORDER, Fenced, Ledger, LedgerError
from .metrics import Metrics
from .replication import OWNER as REPLICA_OWNER
from .replication import Replicator
from .scheduler import Claimed, Scheduler
from .server import PushServer


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
        self.log = log or (lambda msg: print(time.strftime("%H:%M:%S ") + msg, flush=True))
        self.crash_at = crash_at
        self.signing = module_utils("_signing")
        self.secret = config.secret()
        # Nothing the watcher starts needs the secret, and ansible-runner records its environment in every run's
        # artifacts: take it out of this process's environment once read.
        os.environ.pop(config.secret_env, None)
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        self.fence_dir = Path(config.state_dir) / "fences"
        self.fence_dir.mkdir(exist_ok=True)
        self.record_dir = Path(config.state_dir) / "records"
        self.reservation_file = Path(config.state_dir) / "reservations.json"
        self.ledger = Ledger(config.ledger_path, lease=config.lease)
        self.groups = inventory_groups(config.inventory)
        self.metrics = Metrics()
        self.actions = actions_mod.Actions(config.inventory, config.runs_dir, self.log)
        self.controller: Controller | None = None
        if config.controller.url:
            c = config.controller
            try:
                token = read_token(c.token_file, c.token_env)
            except ControllerError as exc:
                raise ValueError(str(exc)) from None
            self.controller = Controller(c.url, token, c.job_template, c.api_path, c.verify_ssl, c.timeout,
                                         c.poll_interval, self.log)
        self.alerter = Alerter(config.alerts.webhooks, self.ledger.claim_alert, config.alerts.retries,
                               config.alerts.timeout, self.log,
                               lambda ok: self.metrics.alerts.labels("sent" if ok else "failed").inc())
        self.server = PushServer(config.host_port, self.verify, self.handle_event, self.health,
                                 self.metrics.render, self._rejected,
                                 sign=lambda body: self.signing.sign(self.secret, body))
        self.scheduler = Scheduler(self.ledger, self._migrate, config.migrate.max_concurrent,
                                   config.migrate.batch_window, config.migrate.batch_max, self._can_join,
                                   on_in_flight=self.metrics.in_flight.set, log=self.log)
        self.active = self.scheduler.active            # {migration id: fence} in flight
        self.fenced_out = self.scheduler.fenced_out    # taken over by another watcher: their runs stop
        self.lock = threading.Lock()
        self.kick = self.scheduler.kick
        self.stopping = self.scheduler.stopping
        self.threads: list[threading.Thread] = []
        self.last_sweep: dict[str, Any] = {}
        self.replicator = Replicator(self) if config.replication.enabled else None
        self.returning: set[str] = set()

    # ------------------------------------------------------------------ pushes
    def verify(self, headers: dict, body: bytes) -> None:
        try:
            self.signing.verify(self.secret, headers, body, self.ledger.seen_nonce, max_skew=self.config.max_skew)
        except self.signing.SignatureError as exc:
            raise Rejected(exc.reason, str(exc)) from None

    def _rejected(self, reason: str, client: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self.log(f"push from {client} refused: {reason}")

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
            self._node_back(node, via)

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
        if notice.get("evicting") and node in self.groups.get("spot", []) and not migration_id:
            if not self.config.migrate.enabled:
                if new:
                    self.alerter.alert(f"notice:{notice['notice_id']}", f"{node} is being taken away ({notice.get('kind')},"
                                       f" deadline {notice.get('deadline')}); migrations are off (migrate.enabled: false)",
                                       node=node, notice_id=notice["notice_id"], kind="notice")
                return {"accepted": True, "duplicate": not new, "migration_id": None}
            created, migration_id = self.ledger.open_migration(notice["notice_id"], node, detected_at or received, received)
            if created:
                self.log(f"migration {migration_id}: {node} is being taken away; moving its workloads")
                self._crash_if("noticed")
                self.kick.set()
        return {"accepted": True, "duplicate": not new, "migration_id": migration_id}

    # ------------------------------------------------------------------ migrations
    def _crash_if(self, state: str) -> None:
        """Fault injection for the reliability tests (``watch --crash-at STATE``): die like a SIGKILL would."""
        if self.crash_at == state:
            self.log(f"--crash-at {state}: SIGKILL")
            os.kill(os.getpid(), signal.SIGKILL)

    def _can_join(self, m: dict) -> bool:
        """May this open migration share a run with others (a wave)? Not one resumed after a watcher died (it has
        its own resume point), not the recovery of a lost node, and in AWX mode none (one job each)."""
        if self.controller is not None or m["attempts"] > 0:
            return False
        return (self.ledger.notice(m["notice_id"]) or {}).get("kind") != "lost"

    def _advance(self, migration_id: str, fence: int, state: str, **fields: Any) -> None:
        try:
            moved = self.ledger.advance(migration_id, fence, state, **fields)
        except Fenced:
            self.fenced_out.add(migration_id)
            raise
        if moved:
            self.log(f"migration {migration_id}: {state}")
            self._crash_if(state)

    def _migrate(self, claimed: Claimed, wave: bool) -> None:
        """One run of the scheduler's: a wave of fresh migrations, or one migration resumed, recovering or in AWX."""
        ids = ", ".join(m for m, _ in claimed)
        try:
            if wave:
                self._run_wave(claimed)
            else:
                self._run_migration(*claimed[0])
        except Fenced as exc:
            self.log(f"migration {ids}: given up, another watcher holds it ({exc})")
        except Exception as exc:  # noqa: BLE001 - one migration's bug must not stop the watcher
            self.log(f"migration {ids}: watcher error {type(exc).__name__}: {exc}")
            for migration_id, fence in claimed:
                try:
                    if self.ledger.migration(migration_id)["state"] not in ("running", "failed"):
                        self._finish(migration_id, fence, "failed", error=f"watcher error: {type(exc).__name__}: {exc}")
                except (LedgerError, Fenced):
                    pass

    def _write_fence(self, migration_id: str, fence: int) -> Path:
        fence_file = self.fence_dir / migration_id
        tmp = fence_file.with_suffix(".tmp")
        tmp.write_text(f"{fence}\n")
        tmp.replace(fence_file)
        return fence_file

    def _per_source(self, m: dict, fence: int, fence_file: Path) -> dict[str, Any]:
        """The variables of one source's migration that the watcher knows and the playbook need not ask for: its
        id and fence, the notice's times, when the agent already signalled the workloads, their replicas."""
        values: dict[str, Any] = {"migration_id": m["id"], "migration_fence": str(fence), "fence_file": str(fence_file),
                                  "notice_at": iso(m["notice_at"]), "detected_at": iso(m["detected_at"])}
        prestaged = {w["name"]: {"target": w["replica"], "root": w["replica_root"], "step": w["replica_step"]}
                     for w in self.ledger.workloads(node=m["source"]) if w["replica"] and w["replica_step"] is not None}
        if prestaged:
            values["prestaged"] = prestaged
        signalled_at = self.ledger.signalled_at(m["notice_id"])
        if signalled_at:
            values["signalled_at"] = signalled_at
        return values

    def _run_wave(self, claimed: Claimed) -> None:
        """Fresh migrations (one or a wave of them) as one migrate run over all their sources: hosts in parallel, one
        joint reservation. Each migration advances its own ledger entry from the results that name it, gets its own
        record and its own outcome: one that fails or whose source is unreachable does not fail the others."""
        rows = {mid: self.ledger.migration(mid) for mid, _fence in claimed}
        fences = dict(claimed)
        sources = {rows[mid]["source"]: mid for mid in rows}
        migrations = {}
        for mid, fence in claimed:
            fence_file = self._write_fence(mid, fence)
            leftovers = actions_mod.kill_marked(mid)
            if leftovers:
                self.log(f"migration {mid}: stopped {len(leftovers)} process(es) left by an earlier run")
            migrations[rows[mid]["source"]] = self._per_source(rows[mid], fence, fence_file)
        extravars: dict[str, Any] = dict(self.config.migrate.extra_vars)
        extravars.update({"source": sorted(sources), "migrations": migrations, "transfer": self.config.migrate.transfer,
                          "spot_record_dir": str(self.record_dir), "spot_reservation_file": str(self.reservation_file)})
        doomed = [n for n in self.ledger.evicting_nodes() if n not in sources]
        if doomed:
            extravars["exclude_hosts"] = doomed
        if len(claimed) > 1:
            self.log(f"wave of {len(claimed)} migrations in one run: {', '.join(sorted(sources))}")

        def route(mid: str) -> Callable[..., None]:
            return lambda state, **kw: self._advance(mid, fences[mid], state, **kw)

        events = actions_mod.MigrationEvents(routes={mid: route(mid) for mid in rows}, hosts=sources)
        first, fence = claimed[0]
        ident = f"{first}-{fence}" if len(claimed) == 1 else f"wave-{first}-{fence}-{len(claimed)}"
        rc, private = self.actions.run(ident, "spot.migration.migrate", extravars, on_event=events,
                                       marker=",".join(rows), timeout=self.config.migrate.timeout,
                                       cancel=lambda: any(mid in self.fenced_out for mid in rows),
                                       forks=max(int(self.config.migrate.forks), 2 * len(claimed)))
        for mid, fence in claimed:
            if mid in self.fenced_out:
                self.log(f"migration {mid}: given up, another watcher holds it (fence {fence} superseded during the run)")
                continue
            outcome, why = self._outcome(mid, rc, events)
            try:
                self._finish(mid, fence, outcome, error=why, private=private)
            except Fenced:
                self.log(f"migration {mid}: given up, another watcher holds it")

    def _outcome(self, migration_id: str, rc: int, events: actions_mod.MigrationEvents) -> tuple[str, str | None]:
        """One migration's outcome in a run, from its record (every workload running on its target) and the failures
        that name it; a migration the run did not clearly finish is failed, never called running."""
        if rc == 0:
            return "running", None
        path = self.record_dir / f"{migration_id}.json"
        record = json.loads(path.read_text()) if path.exists() else None
        moved = (record or {}).get("migrations") or []
        mine = events.by_id.get(migration_id, [])
        if moved and all(r.get("outcome") == "running" for r in moved) and not (record or {}).get("errors"):
            return "running", None
        if not moved and not mine and not events.unattributed and not self.ledger.migration(migration_id)["workloads"]:
            return "running", None  # nothing to move off that source; another source's migration failed
        problems = [f"{r['workload']}: {r.get('outcome')}{': ' + r['error'] if r.get('error') else ''}"
                    for r in moved if r.get("outcome") != "running"]
        why = "; ".join(((record or {}).get("errors") or []) + problems + mine[-3:]) or \
            "; ".join(events.unattributed[-3:]) or f"ansible-playbook rc {rc}"
        return "failed", why[:2000]

    def _run_migration(self, migration_id: str, fence: int) -> None:
        fence_file = self._write_fence(migration_id, fence)
        leftovers = actions_mod.kill_marked(migration_id)
        if leftovers:
            self.log(f"migration {migration_id}: stopped {len(leftovers)} process(es) left by an earlier run")
        m = self.ledger.migration(migration_id)
        if (self.ledger.notice(m["notice_id"]) or {}).get("kind") == "lost":
            self._run_recovery(migration_id, fence, m, fence_file)
            return
        if self.controller is not None and m["attempts"] > 1 and self._follow_earlier_job(migration_id, fence):
            return
        extravars: dict[str, Any] = dict(self.config.migrate.extra_vars)
        extravars.update({
            "source": m["source"], "migration_id": migration_id, "migration_fence": str(fence),
            "fence_file": str(fence_file), "transfer": self.config.migrate.transfer,
            "spot_record_dir": str(self.record_dir),
            "spot_reservation_file": str(self.reservation_file),
            "notice_at": iso(m["notice_at"]), "detected_at": iso(m["detected_at"]),
        })
        prestaged = {w["name"]: {"target": w["replica"], "root": w["replica_root"], "step": w["replica_step"]}
                     for w in self.ledger.workloads(node=m["source"]) if w["replica"] and w["replica_step"] is not None}
        if prestaged:
            extravars["prestaged"] = prestaged
        doomed = [n for n in self.ledger.evicting_nodes() if n != m["source"]]
        if doomed:
            extravars["exclude_hosts"] = doomed
        signalled_at = self.ledger.signalled_at(m["notice_id"])
        if signalled_at:
            extravars["signalled_at"] = signalled_at
        resumed = m["attempts"] > 1
        if resumed and ORDER[m["state"]] >= ORDER["target_reserved"] and m["workloads"]:
            # Resume from the last completed step: what already runs on its target is left alone.
            hosts = [m["source"], *sorted(set(m["targets"].values()))]
            where = actions_mod.locate(self.actions, f"{migration_id}-{fence}-locate", hosts, marker=migration_id)
            done = [w for w in m["workloads"] if (where.get(m["targets"].get(w, "")) or {}).get(w)]
            pending = [w for w in m["workloads"] if w not in done]
            self.log(f"migration {migration_id}: resuming at {m['state']} (attempt {m['attempts']}); already running on "
                     f"the target: {', '.join(done) or 'none'}; still to move: {', '.join(pending) or 'none'}")
            if not pending:
                actions_mod.locate(self.actions, f"{migration_id}-{fence}-cleanup", hosts, remove=(m["source"], done),
                                   marker=migration_id)
                self._advance(migration_id, fence, "verified", detail="found running on the target")
                self._advance(migration_id, fence, "resuming", detail="found running on the target")
                self._finish(migration_id, fence, "running")
                return
            extravars.update({"workloads": pending, "include_stopped": True,
                              "pinned_targets": {w: t for w, t in m["targets"].items() if w in pending}})
            if done:
                actions_mod.locate(self.actions, f"{migration_id}-{fence}-cleanup", [m["source"]],
                                   remove=(m["source"], done), marker=migration_id)
        elif resumed and m["workloads"]:
            extravars.update({"workloads": m["workloads"], "include_stopped": True})
        events = actions_mod.MigrationEvents(lambda state, **kw: self._advance(migration_id, fence, state, **kw))
        if self.controller is not None:
            self._run_on_controller(migration_id, fence, extravars, events)
            return
        rc, private = self.actions.run(f"{migration_id}-{fence}", "spot.migration.migrate", extravars, on_event=events,
                                       marker=migration_id, timeout=self.config.migrate.timeout,
                                       cancel=lambda: migration_id in self.fenced_out,
                                       forks=self.config.migrate.forks)
        if migration_id in self.fenced_out:
            raise Fenced(f"fence {fence} superseded during the run")
        if rc == 0:
            self._finish(migration_id, fence, "running", private=private)
        else:
            why = "; ".join(events.failures[-3:]) or f"ansible-playbook rc {rc}"
            self._finish(migration_id, fence, "failed", error=why, private=private)

    def _follow_earlier_job(self, migration_id: str, fence: int) -> bool:
        """AWX mode after a restart: a job an earlier watcher launched may still be running; follow it rather than
        launching a second one. True when the migration was dealt with."""
        assert self.controller is not None
        earlier = self.ledger.last_job(migration_id)
        if earlier is None:
            return False
        try:
            status = self.controller.status(earlier)
        except ControllerError as exc:
            self.log(f"migration {migration_id}: cannot ask about controller job {earlier}: {exc}")
            return False
        if status == "successful":
            self._finish(migration_id, fence, "running")
            return True
        if status in ("failed", "error", "canceled"):
            return False  # moved again from what the ledger knows, like a local run
        self.log(f"migration {migration_id}: following controller job {earlier} ({status}), launched before the restart")
        events = actions_mod.MigrationEvents(lambda state, **kw: self._advance(migration_id, fence, state, **kw))
        self._run_on_controller(migration_id, fence, {}, events, job=earlier)
        return True

    def _run_on_controller(self, migration_id: str, fence: int, extravars: dict[str, Any],
                           events: actions_mod.MigrationEvents, job: int | None = None) -> None:
        """AWX mode: launch the migrate job template (or follow the job an earlier watcher launched) to its end."""
        assert self.controller is not None
        # Paths on this machine mean nothing inside the controller's execution environment.
        for local in ("fence_file", "spot_record_dir", "spot_reservation_file"):
            extravars.pop(local, None)
        try:
            if job is None:
                job = self.controller.launch(extravars)
                self.ledger.note_job(migration_id, fence, job)
                self.log(f"migration {migration_id}: controller job {job} launched")
            status = self.controller.follow(job, on_event=events, cancel=lambda: migration_id in self.fenced_out,
                                            timeout=self.config.migrate.timeout)
        except ControllerError as exc:
            self._finish(migration_id, fence, "failed", error=f"controller: {exc}")
            return
        if migration_id in self.fenced_out:
            raise Fenced(f"fence {fence} superseded during controller job {job}")
        if status == "successful":
            self._finish(migration_id, fence, "running")
        else:
            why = "; ".join(events.failures[-3:]) or f"controller job {job} {status}"
            self._finish(migration_id, fence, "failed", error=why)

    # ------------------------------------------------------------------ lost nodes
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
        self.log(f"{node} is LOST: agent silent and unreachable for more than {self.config.lost.grace:.0f} s ({names})")
        self.alerter.alert(f"lost:{node}:{now:.0f}", f"{node} was lost without a notice; resuming {names} from replicas",
                           node=node, kind="lost", workloads=[w["name"] for w in workloads])
        if not workloads or not self.config.migrate.enabled:
            return
        notice = {"notice_id": f"lost-{node}-{now:.0f}", "evicting": True, "kind": "lost", "provider": "none",
                  "action": "lost", "deadline": None}
        self.ledger.record_notice(node, notice, "lost", now, notice_at=now)
        created, migration_id = self.ledger.open_migration(notice["notice_id"], node, now, now)
        if created:
            self.kick.set()

    def _run_recovery(self, migration_id: str, fence: int, m: dict, fence_file: Path) -> None:
        """The migration of a lost node: fence every copy there, resume each workload on its replica node."""
        node = m["source"]
        plan, skipped = [], []
        for w in self.ledger.workloads(node=node):
            self.ledger.fence(node, w["name"], migration_id)
            if w["replica"] and w["replica_step"] is not None and w["replica_root"]:
                plan.append({"name": w["name"], "spec": w["spec"], "replica": w["replica"], "replica_root": w["replica_root"],
                             "gpus": w["replica_gpus"] or []})
            else:
                skipped.append(w["name"])
        self._advance(migration_id, fence, "checkpointing", detail=f"{node} lost: fenced its copies",
                      workloads=[p["name"] for p in plan] + skipped)
        self._advance(migration_id, fence, "target_reserved", detail="pre-reserved replica nodes",
                      targets={p["name"]: p["replica"] for p in plan},
                      steps={w["name"]: w["replica_step"] for w in self.ledger.workloads(node=node)
                             if w["replica_step"] is not None})
        if not plan:
            self._finish(migration_id, fence, "failed", error=f"no replica of {', '.join(skipped)}: nothing to resume from")
            return
        results: list[dict] = []
        failures: list[str] = []

        def on_event(event: dict) -> None:
            # The recover role's migration_target results, by their data (never task names).
            data = event.get("event_data") or {}
            res = data.get("res") or {}
            migration = res.get("migration") if isinstance(res, dict) else None
            if event.get("event") == "runner_on_ok" and isinstance(migration, dict) and migration.get("step") == "started":
                self._advance(migration_id, fence, "verified", detail=f"replica on {migration.get('target')}")
                self._advance(migration_id, fence, "resuming", detail="from the replica")
                results.extend({"name": name, "target": migration.get("target"), "step": row.get("step")}
                               for name, row in (migration.get("workloads") or {}).items())
            elif event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                failures.append(f"{data.get('host')}: {res.get('msg') or res}"[:600])

        extravars = {"lost_node": node, "recover_plan": plan, "migration_id": migration_id,
                     "fence_file": str(fence_file), "migration_fence": str(fence),
                     "resume_timeout": int(self.config.migrate.extra_vars.get("resume_timeout", 120))}
        rc, private = self.actions.run(f"{migration_id}-{fence}", "spot.migration.recover", extravars, on_event=on_event,
                                       marker=migration_id, timeout=self.config.migrate.timeout,
                                       cancel=lambda: migration_id in self.fenced_out, forks=self.config.migrate.forks)
        if migration_id in self.fenced_out:
            raise Fenced(f"fence {fence} superseded during the recovery")
        placement = module_utils("_placement")
        for done in results:
            placement.release(str(self.reservation_file), REPLICA_OWNER.format(done["name"]))
            self.ledger.workload_seen(done["name"], done["target"], next(p["spec"] for p in plan if p["name"] == done["name"]),
                                      len(next(p["gpus"] for p in plan if p["name"] == done["name"])))
        if rc == 0 and not skipped:
            self._finish(migration_id, fence, "running", private=private)
        else:
            why = "; ".join(failures[-3:]) or (f"no replica of {', '.join(skipped)}" if skipped else f"rc {rc}")
            self._finish(migration_id, fence, "failed", error=why, private=private)

    def _node_back(self, node: str, via: str) -> None:
        """A lost node answers again: before anything else, stop and fence the copies it still has."""
        with self.lock:
            if node in self.returning:
                return
            self.returning.add(node)
        self.log(f"{node} is back ({via}); stopping the fenced copies there first")
        self.scheduler.pool.submit(self._unfence, node)

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
                self.log(f"{node}: fencing its stale copies failed (rc {rc}); will try again when it is seen next")
        finally:
            with self.lock:
                self.returning.discard(node)

    def _finish(self, migration_id: str, fence: int, outcome: str, error: str | None = None,
                private: Path | None = None) -> None:
        record_path = self.record_dir / f"{migration_id}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        self._advance(migration_id, fence, outcome, error=error, record=record)
        m = self.ledger.migration(migration_id)
        self.metrics.migrations.labels(outcome).inc()
        if outcome == "running" and m["notice_at"]:
            self.metrics.duration.observe(max(0.0, m["finished_at"] - m["notice_at"]))
        moved = ", ".join(f"{w} -> {m['targets'].get(w, '?')}" for w in m["workloads"]) or "nothing to move"
        text = (f"{m['source']} evicted: {moved} (running again, {m['finished_at'] - m['notice_at']:.0f} s after the notice)"
                if outcome == "running" else f"migration off {m['source']} FAILED: {error}")
        self.alerter.alert(f"migration:{migration_id}:{outcome}", text, migration_id=migration_id, outcome=outcome,
                           source=m["source"], targets=m["targets"], workloads=m["workloads"], error=error,
                           run_dir=str(private) if private else None)

    # ------------------------------------------------------------------ sweep
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
            self.node_seen(host, "sweep", blind, res.get("error"), res.get("provider"), None)
            if not blind and res.get("kind") not in (None, "none") and res.get("notice_id"):
                notice = {k: v for k, v in res.items() if k not in ("changed", "invocation", "notices", "elapsed")}
                self.on_notice(host, notice, "sweep", to_epoch(res.get("checked_at")))

        rc, seconds = actions_mod.sweep(self.actions, hosts, self.config.sweep.timeout, on_result,
                                        forks=self.config.sweep.forks)
        self.metrics.sweeps.labels("ok" if rc == 0 else "failed").inc()
        self.check_lost()
        self.last_sweep = {"hosts": hosts, "seconds": round(seconds, 2), "rc": rc, "at": time.time()}
        return self.last_sweep

    def _sweeper(self) -> None:
        while not self.stopping.wait(float(self.config.sweep.interval)):
            try:
                self.sweep_once()
            except Exception as exc:  # noqa: BLE001 - a failed sweep is reported and retried next time
                self.metrics.sweeps.labels("error").inc()
                self.log(f"sweep failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ life cycle
    def health(self) -> tuple[bool, dict]:
        try:
            open_migrations = len(self.ledger.migrations(open_only=True))
            ok = all(t.is_alive() for t in self.threads)
        except Exception as exc:  # noqa: BLE001 - reported as unhealthy
            return False, {"ok": False, "error": str(exc)}
        return ok, {"ok": ok, "open_migrations": open_migrations, "active": sorted(self.active),
                    "last_sweep": self.last_sweep}

    def start(self) -> None:
        self.server.thread.start()
        loops = [(self.scheduler.loop, "scheduler"), (self._sweeper, "sweeper")]
        if self.replicator is not None:
            loops.append((self.replicator.run_forever, "replicator"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        self.log(f"watching {len(self.groups.get(self.config.sweep.group, []))} spot node(s) from "
                 f"{self.config.inventory}; pushes on {self.server.url}/v1/events; ledger {self.config.ledger_path}")
        self.kick.set()

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


def iso(epoch: float | None) -> str | None:
    """ISO 8601 UTC with microseconds (None for None)."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int((epoch % 1) * 1e6):06d}Z"
