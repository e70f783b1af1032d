"""The migration runner: one scheduler run at a time - a wave of fresh migrations as one migrate run, or one
migration resumed after a watcher died, recovering a lost node, or in AWX mode - through ansible-runner or the
controller's API. It follows each run by the data its modules return (never task names), advances each migration's
ledger entry under its fence, and finishes each with its record, metrics and one alert."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import logs, module_utils
from . import actions as actions_mod
from . import planner
from .alerts import Alerter
from .config import WatchConfig
from .controller import Controller, ControllerError
from .intake import to_epoch
from .ledger import ORDER, Fenced, Ledger, LedgerError
from .metrics import Metrics
from .replication import OWNER as REPLICA_OWNER
from .scheduler import Claimed


def iso(epoch: float | None) -> str | None:
    """ISO 8601 UTC with microseconds (None for None)."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int((epoch % 1) * 1e6):06d}Z"


class MigrationRunner:
    def __init__(self, config: WatchConfig, ledger: Ledger, actions: actions_mod.Actions, controller: Controller | None,
                 alerter: Alerter, metrics: Metrics, state_dir: Path, fenced_out: set[str],
                 log: Callable[[str], None], crash_at: str | None = None):
        self.config, self.ledger, self.actions, self.controller = config, ledger, actions, controller
        self.alerter, self.metrics, self.fenced_out, self.log, self.crash_at = alerter, metrics, fenced_out, log, crash_at
        self.fence_dir = Path(state_dir) / "fences"
        self.fence_dir.mkdir(exist_ok=True)
        self.record_dir = Path(state_dir) / "records"
        self.reservation_file = Path(state_dir) / "reservations.json"

    def crash_if(self, state: str) -> None:
        """Fault injection for the reliability tests (``watch --crash-at STATE``): die like a SIGKILL would."""
        if self.crash_at == state:
            self.log(logs.warning(f"--crash-at {state}: SIGKILL"))
            os.kill(os.getpid(), signal.SIGKILL)

    def can_join(self, m: dict) -> bool:
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
            message = f"migration {migration_id}: {state}"
            self.log(logs.warning(message) if state == "failed" else message)
            self.crash_if(state)

    def run(self, claimed: Claimed, wave: bool) -> None:
        """One run of the scheduler's: a wave of fresh migrations, or one migration resumed, recovering or in AWX."""
        ids = ", ".join(m for m, _ in claimed)
        try:
            if wave:
                self._run_wave(claimed)
            else:
                self._run_migration(*claimed[0])
        except Fenced as exc:
            self.log(logs.warning(f"migration {ids}: given up, another watcher holds it ({exc})"))
        except Exception as exc:  # noqa: BLE001 - one migration's bug must not stop the watcher
            self.log(logs.error(f"migration {ids}: watcher error {type(exc).__name__}: {exc}"))
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

    def _prestaged(self, source: str) -> dict[str, dict]:
        """What waits for each workload of ``source`` elsewhere: its replica node's copy (``target``, ``root``,
        ``step``) and, with ``replication.store``, its replica in object storage (``store``, ``store_step``, ...),
        which any target can restore."""
        stored = self.ledger.store_replicas() if self.config.replication.store else {}
        out = {}
        for w in self.ledger.workloads(node=source):
            item = {}
            if w["replica"] and w["replica_step"] is not None:
                item.update({"target": w["replica"], "root": w["replica_root"], "step": w["replica_step"]})
            known = stored.get(w["name"]) or {}
            if known.get("step") is not None and known.get("store") == self.config.replication.store:
                item.update({"store": known["store"], "store_step": known["step"],
                             "store_transfers": int(self.config.replication.store_transfers),
                             "store_rclone": self.config.replication.store_rclone})
            if item:
                out[w["name"]] = item
        return out

    def _per_source(self, m: dict, fence: int, fence_file: Path) -> dict[str, Any]:
        """The variables of one source's migration that the watcher knows and the playbook need not ask for: its
        id and fence, the notice's times, when the agent already signalled the workloads, their replicas."""
        values: dict[str, Any] = {"migration_id": m["id"], "migration_fence": str(fence), "fence_file": str(fence_file),
                                  "notice_at": iso(m["notice_at"]), "detected_at": iso(m["detected_at"])}
        prestaged = self._prestaged(m["source"])
        if prestaged:
            values["prestaged"] = prestaged
        signalled_at = self.ledger.signalled_at(m["notice_id"])
        if signalled_at:
            values["signalled_at"] = signalled_at
        made = self._plan(m)
        if made and made.get("choices"):
            values["choices"] = made["choices"]
        return values

    def _plan(self, m: dict) -> dict | None:
        """The plan against the deadline for this migration (watch/planner.py): made once, at its first run, from
        what the ledger has measured, saved and logged; a run resumed after a watcher died follows the same plan.
        None when planning is off (``migrate.plan``) or the source runs nothing known."""
        if not self.config.migrate.plan:
            return None
        saved = self.ledger.plan(m["id"])
        if saved is not None:
            return saved
        workloads = self.ledger.workloads(node=m["source"])
        if not workloads:
            return None
        if self.config.replication.store:
            stored = self.ledger.store_replicas()
            workloads = [dict(w, store_step=(stored.get(w["name"]) or {}).get("step"),
                              store_bytes=(stored.get(w["name"]) or {}).get("bytes"))
                         if (stored.get(w["name"]) or {}).get("store") == self.config.replication.store else w
                         for w in workloads]
        notice = self.ledger.notice(m["notice_id"]) or {}
        try:
            payload = json.loads(notice.get("payload") or "{}")
        except ValueError:
            payload = {}
        extra = self.config.migrate.extra_vars
        made = planner.plan_source(workloads, m["source"], payload, m["detected_at"] or time.time(), time.time(),
                                   self.ledger.measurements(), default_deadline=float(extra.get("default_deadline", 30.0)),
                                   safety_margin=float(extra.get("safety_margin", 5.0)),
                                   unavailable={n for n in self.ledger.evicting_nodes() if n != m["source"]})
        self.ledger.save_plan(m["id"], made)
        for name, p in sorted(made["workloads"].items()):
            self.metrics.plan_choices.labels(p["choice"]).inc()
            self.log(f"migration {m['id']}: plan for {name}: {p['choice']}"
                     + (f" (else the replica on {p['target']})" if p["fallback"] else "") + f" - {p['reason']}")
        return made

    def _learn(self, migration_id: str, m: dict, record: dict | None) -> None:
        """After a migration: what its record measured goes to the ledger for the next plans; the plan gets the
        actual times beside its predictions (``spot-migration history``), the prediction error goes to the metrics."""
        if not record:
            return
        self.ledger.measure(planner.measurements_from_record(record, m["detected_at"], to_epoch))
        made = self.ledger.plan(migration_id)
        if not made:
            return
        for row in record.get("migrations") or []:
            p = (made.get("workloads") or {}).get(row.get("workload"))
            started = to_epoch(row.get("started_on_target_at"))
            if p is None:
                continue
            if row.get("fell_back"):
                self.metrics.plan_fallbacks.labels("replica").inc()
            actual = round(started - m["detected_at"], 2) if started and m["detected_at"] else None
            applied = row.get("resume_choice") or p["choice"]
            predicted = next((o["predicted_s"] for o in p["options"] if o["from"] == applied), None)
            p["actual"] = {"from": "replica" if row.get("fell_back") else applied, "running_after_s": actual,
                           "fell_back": row.get("fell_back"), "resumed_step": row.get("resumed_step")}
            if actual is not None and predicted is not None and not row.get("fell_back"):
                self.metrics.plan_error.observe(actual - predicted)
        self.ledger.save_plan(migration_id, made)

    def _add_at_risk(self, extravars: dict[str, Any], skip: set[str]) -> None:
        """Nodes with an early warning (``warnings.kinds`` within ``warnings.hold``) go to the playbook as
        ``at_risk_hosts``: still targets, but taken last; the sources and the excluded ones are left out."""
        warnings = self.config.warnings
        at_risk = sorted(n for n in self.ledger.at_risk(warnings.kinds, warnings.hold) if n not in skip)
        if at_risk:
            extravars["at_risk_hosts"] = at_risk

    def _gangs_of(self, sources: list[str]) -> dict[str, list[str]]:
        """``{gang: [the sources that host one of its members]}``, from what the ledger knows runs on them."""
        out: dict[str, list[str]] = {}
        for source in sources:
            for w in self.ledger.workloads(node=source):
                gang = ((w.get("spec") or {}).get("gang") or {}).get("name")
                if gang and source not in out.get(gang, []):
                    out.setdefault(gang, []).append(source)
        return out

    def _gang_run(self, migration_id: str, fence: int, fence_file: Path, gang: str, extravars: dict[str, Any],
                  what: str) -> str | None:
        """One ``migrate_gang`` run for ``migration_id`` (its id ``<migration id>.<gang>``, under its fence): skipped
        when an earlier run's record says it was done (its watcher died before it was told); the run's results
        advance the migration's ledger states only (the members are the gang's to move: a resumed run runs
        migrate_gang again, never migrate on a member alone); moved members follow in the ledger. The error, if any."""
        ident = f"{migration_id}.{gang}"
        path = self.record_dir / f"{ident}.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        if record.get("migrations") and not record.get("problems"):
            self.log(f"migration {migration_id}: gang {gang} was moved by an earlier run ({path})")
            return None
        self.log(f"migration {migration_id}: gang {gang}: {what}")
        extravars = dict(extravars, gang=gang, migration_id=ident, migration_fence=str(fence),
                         fence_file=str(fence_file), spot_record_dir=str(self.record_dir),
                         spot_reservation_file=str(self.reservation_file))
        events = actions_mod.MigrationEvents(routes={ident: lambda state, **kw: self._advance(
            migration_id, fence, state, detail=f"gang {gang}: {kw.get('detail') or state}")})
        rc, private = self.actions.run(f"{migration_id}-{fence}-gang-{gang}", "spot.migration.migrate_gang", extravars,
                                       on_event=events, marker=migration_id, timeout=self.config.migrate.timeout,
                                       cancel=lambda: migration_id in self.fenced_out,
                                       forks=max(int(self.config.migrate.forks), 8))
        if migration_id in self.fenced_out:
            raise Fenced(f"migration {migration_id}: fence {fence} superseded during the gang's run")
        record = json.loads(path.read_text()) if path.exists() else {}
        for row in record.get("migrations") or []:
            if row.get("moved") and row.get("outcome") == "resumed" and self.ledger.workload_moved(
                    row["workload"], row["target"]):
                self.log(f"migration {migration_id}: {row['workload']} (gang {gang}) now runs on {row['target']}")
        if rc != 0:
            why = "; ".join(record.get("problems") or []) or f"migrate_gang rc {rc} (its run: {private})"
            self.log(logs.warning(f"migration {migration_id}: gang {gang} not moved: {why}"))
            return f"gang {gang}: {why}"[:2000]
        self.log(f"migration {migration_id}: gang {gang} runs again on {', '.join(record.get('members') or [])} "
                 + (f"from step {record.get('step')}" if not record.get("already") else "(an earlier run had restarted it)"))
        return None

    def _run_gangs(self, rows: dict[str, dict], fences: dict[str, int], fence_files: dict[str, Path],
                   gangs: dict[str, list[str]] | None = None) -> dict[str, str]:
        """The gangs with a member on these migrations' sources: one ``migrate_gang`` run per gang (its members
        evicted in this wave in one run, under the fence of the first one's migration), before the sources' other
        workloads move (``migrate`` leaves a gang's members to it). ``gangs``: ``{gang: sources}`` found by a
        migrate run (members the ledger did not know of), else the ledger's. Returns ``{migration id: error}`` for the
        migrations whose gang could not be moved."""
        by_source = {m["source"]: mid for mid, m in rows.items()}
        errors: dict[str, str] = {}
        if gangs is None:
            gangs = self._gangs_of(sorted(by_source))
        for gang, sources in sorted(gangs.items()):
            sources = [s for s in sources if s in by_source]
            if not sources:
                continue
            first = by_source[sources[0]]
            extravars: dict[str, Any] = dict(self.config.migrate.extra_vars, source=sources)
            signalled_at = self.ledger.signalled_at(rows[first]["notice_id"])
            if signalled_at:
                extravars["signalled_at"] = signalled_at
            why = self._gang_run(first, fences[first], fence_files[first], gang, extravars,
                                 f"members on {', '.join(sources)}: one migrate_gang run")
            if why:
                errors.update({by_source[source]: why for source in sources})
        return errors

    def _run_wave(self, claimed: Claimed) -> None:
        """Fresh migrations (one or a wave of them) as one migrate run over all their sources: hosts in parallel, one
        joint reservation. Each migration advances its own ledger entry from the results that name it, gets its own
        record and its own outcome: one that fails or whose source is unreachable does not fail the others."""
        rows = {mid: self.ledger.migration(mid) for mid, _fence in claimed}
        fences = dict(claimed)
        sources = {rows[mid]["source"]: mid for mid in rows}
        migrations, fence_files = {}, {}
        for mid, fence in claimed:
            fence_file = fence_files[mid] = self._write_fence(mid, fence)
            leftovers = actions_mod.kill_marked(mid)
            if leftovers:
                self.log(f"migration {mid}: stopped {len(leftovers)} process(es) left by an earlier run")
            migrations[rows[mid]["source"]] = self._per_source(rows[mid], fence, fence_file)
        gang_errors = self._run_gangs(rows, fences, fence_files)
        extravars: dict[str, Any] = dict(self.config.migrate.extra_vars)
        extravars.update({"source": sorted(sources), "migrations": migrations, "transfer": self.config.migrate.transfer,
                          "spot_record_dir": str(self.record_dir), "spot_reservation_file": str(self.reservation_file)})
        doomed = [n for n in self.ledger.evicting_nodes() if n not in sources]
        if doomed:
            extravars["exclude_hosts"] = doomed
        self._add_at_risk(extravars, set(sources) | set(doomed))
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
        known = self._gangs_of(sorted(sources))
        found = {g: s for g, s in events.gangs.items() if g not in known}
        if found:  # members the ledger did not know of: their gangs move now
            gang_errors.update(self._run_gangs(rows, fences, fence_files, found))
        for mid, fence in claimed:
            if mid in self.fenced_out:
                self.log(f"migration {mid}: given up, another watcher holds it (fence {fence} superseded during the run)")
                continue
            outcome, why = self._outcome(mid, rc, events)
            if mid in gang_errors:
                outcome, why = "failed", "; ".join(filter(None, [gang_errors[mid], why]))
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
        prestaged = self._prestaged(m["source"])
        if prestaged:
            extravars["prestaged"] = prestaged
        doomed = [n for n in self.ledger.evicting_nodes() if n != m["source"]]
        if doomed:
            extravars["exclude_hosts"] = doomed
        self._add_at_risk(extravars, {m["source"], *doomed})
        signalled_at = self.ledger.signalled_at(m["notice_id"])
        if signalled_at:
            extravars["signalled_at"] = signalled_at
        made = self._plan(m)
        if made and made.get("choices"):
            extravars["choices"] = made["choices"]
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
        gang_errors = self._run_gangs({migration_id: m}, {migration_id: fence}, {migration_id: fence_file}) \
            if self.controller is None else {}
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
        known = self._gangs_of([m["source"]])
        found = {g: s for g, s in events.gangs.items() if g not in known}
        if found:  # members the ledger did not know of: their gangs move now
            gang_errors.update(self._run_gangs({migration_id: m}, {migration_id: fence}, {migration_id: fence_file},
                                               found))
        if rc == 0 and not gang_errors:
            self._finish(migration_id, fence, "running", private=private)
        else:
            why = "; ".join(list(gang_errors.values()) + events.failures[-3:]) or f"ansible-playbook rc {rc}"
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
            self.log(logs.warning(f"migration {migration_id}: cannot ask about controller job {earlier}: {exc}"))
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

    def _run_recovery(self, migration_id: str, fence: int, m: dict, fence_file: Path) -> None:
        """The migration of a lost node: fence every copy there, resume each workload on its replica node."""
        node = m["source"]
        plan, skipped = [], []
        gangs: dict[str, dict] = {}
        stored = self.ledger.store_replicas() if self.config.replication.store else {}
        for w in self.ledger.workloads(node=node):
            self.ledger.fence(node, w["name"], migration_id)
            in_store = (stored.get(w["name"]) or {}).get("step") is not None
            if (w["spec"] or {}).get("gang"):
                # Never resumed alone (it would wait for a rendezvous that never comes): its gang restarts below.
                gangs[w["spec"]["gang"]["name"]] = w
            elif w["replica"] and w["replica_root"] and (w["replica_step"] is not None or in_store):
                item = {"name": w["name"], "spec": w["spec"], "replica": w["replica"], "replica_root": w["replica_root"],
                        "gpus": w["replica_gpus"] or []}
                if in_store:
                    # The replica node resumes it from the newer of its own replica and the one in object storage.
                    item.update({"store": stored[w["name"]]["store"],
                                 "store_transfers": int(self.config.replication.store_transfers),
                                 "store_rclone": self.config.replication.store_rclone})
                plan.append(item)
            else:
                skipped.append(w["name"])
        self._advance(migration_id, fence, "checkpointing", detail=f"{node} lost: fenced its copies",
                      workloads=[p["name"] for p in plan] + skipped)
        self._advance(migration_id, fence, "target_reserved", detail="pre-reserved replica nodes",
                      targets={p["name"]: p["replica"] for p in plan},
                      steps={w["name"]: w["replica_step"] for w in self.ledger.workloads(node=node)
                             if w["replica_step"] is not None})
        if not plan and not gangs:
            self._finish(migration_id, fence, "failed", error=f"no replica of {', '.join(skipped)}: nothing to resume from")
            return
        gang_errors = [e for e in (self._run_lost_gang(migration_id, fence, fence_file, node, w)
                                   for _gang, w in sorted(gangs.items())) if e]
        if not plan:
            if gang_errors or skipped:
                why = "; ".join(gang_errors + ([f"no replica of {', '.join(skipped)}"] if skipped else []))
                self._finish(migration_id, fence, "failed", error=why)
            else:
                self._finish(migration_id, fence, "running")
            return
        results: list[dict] = []
        failures: list[str] = []

        def on_event(event: dict) -> None:
            # The recover role's migration_target results, by their data (never task names).
            data = event.get("event_data") or {}
            res = data.get("res") or {}
            migration = res.get("migration") if isinstance(res, dict) else None
            if event.get("event") == "runner_on_ok" and isinstance(migration, dict) and migration.get("step") == "started":
                rows = migration.get("workloads") or {}
                stored = sorted(name for name, row in rows.items() if row.get("resumed_from_kind") == "store")
                self._advance(migration_id, fence, "verified", detail=f"replica on {migration.get('target')}")
                self._advance(migration_id, fence, "resuming", detail="from the replica" + (
                    f" in object storage ({', '.join(stored)})" if stored else ""))
                results.extend({"name": name, "target": migration.get("target"), "step": row.get("step"),
                                "resumed_from_kind": row.get("resumed_from_kind")} for name, row in rows.items())
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
        if rc == 0 and not skipped and not gang_errors:
            self._finish(migration_id, fence, "running", private=private)
        else:
            why = "; ".join(gang_errors + failures[-3:]) or (
                f"no replica of {', '.join(skipped)}" if skipped else f"rc {rc}")
            self._finish(migration_id, fence, "failed", error=why, private=private)

    def _run_lost_gang(self, migration_id: str, fence: int, fence_file: Path, node: str, w: dict) -> str | None:
        """A gang member on a lost node: the gang restarts from the newest step every survivor and the member's
        replica hold, the replica node taking the member's place (``migrate_gang`` with ``lost``). The error, if any."""
        gang = w["spec"]["gang"]["name"]
        members = list(w["spec"]["gang"].get("members") or [])
        shared = w["spec"]["gang"].get("layout") == "shared"  # its part is on storage every member mounts
        if node not in members or not (shared or (w["replica"] and w["replica_root"] and w["replica_step"] is not None)):
            return f"gang {gang}: no replica of {w['name']} to restart it from"
        lost = {"name": w["name"], "spec": w["spec"]}
        if not shared:
            lost.update({"host": w["replica"], "root": w["replica_root"]})
        extravars: dict[str, Any] = dict(self.config.migrate.extra_vars)
        extravars.update({"source": [node], "gang_members": members, "lost": True, "lost_replicas": {node: lost}})
        return self._gang_run(migration_id, fence, fence_file, gang, extravars, f"lost {w['name']}: restarting it " + (
            "from the gang's checkpoint on shared storage" if shared else
            f"with its replica on {w['replica']} (step {w['replica_step']} or older)"))

    def _finish(self, migration_id: str, fence: int, outcome: str, error: str | None = None,
                private: Path | None = None) -> None:
        record_path = self.record_dir / f"{migration_id}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        self._advance(migration_id, fence, outcome, error=error, record=record)
        try:
            self._learn(migration_id, self.ledger.migration(migration_id), record)
        except (KeyError, TypeError, ValueError) as exc:  # a record of an older shape teaches nothing; never fatal
            self.log(logs.warning(f"migration {migration_id}: nothing learnt from its record: {exc}"))
        # Wherever the job runs now (its first target, the next one after a failover, or back on the source when
        # nothing could take it), whatever the outcome: the record's rows say, the workload's location follows.
        for row in (record or {}).get("migrations") or []:
            if row.get("outcome") in ("running", "started", "restarted_on_source") and row.get("workload") and \
                    row.get("target"):
                if self.ledger.workload_moved(row["workload"], row["target"]):
                    self.log(f"migration {migration_id}: {row['workload']} now runs on {row['target']}")
        m = self.ledger.migration(migration_id)
        self.metrics.migrations.labels(outcome).inc()
        self.metrics.transferred((record or {}).get("migrations") or [], to_epoch)
        if outcome == "running" and m["notice_at"]:
            self.metrics.duration.observe(max(0.0, m["finished_at"] - m["notice_at"]))
        moved = ", ".join(f"{w} -> {m['targets'].get(w, '?')}" for w in m["workloads"]) or "nothing to move"
        text = (f"{m['source']} evicted: {moved} (running again, {m['finished_at'] - m['notice_at']:.0f} s after the notice)"
                if outcome == "running" else f"migration off {m['source']} FAILED: {error}")
        self.alerter.alert(f"migration:{migration_id}:{outcome}", text, migration_id=migration_id, outcome=outcome,
                           source=m["source"], targets=m["targets"], workloads=m["workloads"], error=error,
                           run_dir=str(private) if private else None)
