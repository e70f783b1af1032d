"""The ledger: every notice (deduplicated by ``notice_id``), every migration as a state machine with a
fencing token, node heartbeats, push nonces and sent alerts, in one SQLite file (WAL).

Each migration is owned by one watcher at a time. :meth:`Ledger.claim` takes it (the fence goes up by
one); every later change names the fence it holds and is refused with :class:`Fenced` once somebody
else has claimed the migration, so a second or restarted watcher can never run it twice.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

STATES = ("noticed", "checkpointing", "checkpointed", "target_reserved", "transferring", "verified", "resuming",
          "running", "failed")
TERMINAL = ("running", "failed")
ORDER = {state: index for index, state in enumerate(STATES)}

SCHEMA = """
CREATE TABLE IF NOT EXISTS notices (
    notice_id TEXT PRIMARY KEY, node TEXT NOT NULL, provider TEXT, kind TEXT, evicting INTEGER NOT NULL,
    deadline TEXT, notice_at REAL, detected_at REAL NOT NULL, first_via TEXT NOT NULL, deliveries INTEGER NOT NULL,
    signalled_at REAL, payload TEXT NOT NULL, migration_id TEXT);
CREATE TABLE IF NOT EXISTS migrations (
    id TEXT PRIMARY KEY, notice_id TEXT, source TEXT NOT NULL, state TEXT NOT NULL, fence INTEGER NOT NULL,
    owner TEXT, owner_host TEXT, owner_pid INTEGER, owner_ticks TEXT, lease_until REAL, attempts INTEGER NOT NULL,
    workloads TEXT NOT NULL, targets TEXT NOT NULL, steps TEXT NOT NULL, notice_at REAL, detected_at REAL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL, error TEXT, record TEXT);
CREATE INDEX IF NOT EXISTS migrations_open ON migrations (state);
CREATE TABLE IF NOT EXISTS transitions (
    migration_id TEXT NOT NULL, state TEXT NOT NULL, fence INTEGER NOT NULL, at REAL NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY, last_heartbeat_at REAL, last_probe_at REAL, blind INTEGER NOT NULL DEFAULT 0,
    blind_since REAL, error TEXT, provider TEXT, via TEXT, agent_version TEXT);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, sent_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, created_at REAL NOT NULL, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workloads (
    name TEXT PRIMARY KEY, node TEXT NOT NULL, spec TEXT NOT NULL, gpus INTEGER NOT NULL, seen_at REAL NOT NULL,
    replica TEXT, replica_gpus TEXT, replica_root TEXT, replica_step INTEGER, replica_mtime REAL, replicated_at REAL,
    replica_bytes INTEGER, source_step INTEGER, source_mtime REAL, error TEXT);
CREATE TABLE IF NOT EXISTS node_health (
    node TEXT PRIMARY KEY, unreachable_since REAL, lost_at REAL, returned_at REAL);
CREATE TABLE IF NOT EXISTS fences (
    node TEXT NOT NULL, workload TEXT NOT NULL, migration_id TEXT, created_at REAL NOT NULL, applied_at REAL,
    PRIMARY KEY (node, workload));
CREATE TABLE IF NOT EXISTS measurements (
    kind TEXT NOT NULL, key TEXT NOT NULL, value REAL NOT NULL, bytes INTEGER, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS measurements_key ON measurements (kind, key, at);
CREATE TABLE IF NOT EXISTS store_replicas (
    name TEXT PRIMARY KEY, store TEXT NOT NULL, step INTEGER, bytes INTEGER, at REAL, error TEXT);
CREATE TABLE IF NOT EXISTS plans (migration_id TEXT PRIMARY KEY, plan TEXT NOT NULL, made_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS controller_jobs (
    migration_id TEXT NOT NULL, fence INTEGER NOT NULL, job INTEGER NOT NULL, launched_at REAL NOT NULL);
"""


# A workload that changed node keeps no replica (replication picks a new one for where it runs now).
_FORGET_REPLICA = ("replica = NULL, replica_gpus = NULL, replica_step = NULL, replica_mtime = NULL, replicated_at = NULL, "
                   "error = NULL")

class LedgerError(RuntimeError):
    """The ledger refused a change; the message says which and why."""


class Fenced(LedgerError):
    """This watcher no longer holds the migration: another one claimed it (a higher fence)."""


def _ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


class Ledger:
    """One SQLite file; safe to share between threads of one process and between processes."""

    def __init__(self, path: Path | str, owner: str | None = None, lease: float = 15.0, clock=time.time):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.ticks = _ticks(self.pid)
        self.lease = lease
        self.clock = clock
        self._local = threading.local()
        self._db().executescript(SCHEMA)
        os.chmod(self.path, 0o600)

    # ------------------------------------------------------------------ plumbing
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------------ notices
    def record_notice(self, node: str, notice: dict[str, Any], via: str, detected_at: float,
                      notice_at: float | None = None, signalled_at: float | None = None) -> tuple[bool, dict]:
        """Store a notice once. Returns (new, row); a repeat only counts a delivery."""
        notice_id = notice.get("notice_id")
        if not notice_id:
            raise LedgerError(f"notice from {node} has no notice_id: {json.dumps(notice)[:200]}")
        with self._tx() as db:
            row = db.execute("SELECT * FROM notices WHERE notice_id = ?", (notice_id,)).fetchone()
            if row is not None:
                db.execute("UPDATE notices SET deliveries = deliveries + 1, signalled_at = COALESCE(signalled_at, ?) "
                           "WHERE notice_id = ?", (signalled_at, notice_id))
                return False, dict(row)
            db.execute("INSERT INTO notices (notice_id, node, provider, kind, evicting, deadline, notice_at, detected_at,"
                       " first_via, deliveries, signalled_at, payload) VALUES (?,?,?,?,?,?,?,?,?,1,?,?)",
                       (notice_id, node, notice.get("provider"), notice.get("kind"), int(bool(notice.get("evicting"))),
                        notice.get("deadline"), notice_at, detected_at, via, signalled_at,
                        json.dumps(notice, sort_keys=True)))
            return True, dict(db.execute("SELECT * FROM notices WHERE notice_id = ?", (notice_id,)).fetchone())

    def evicting_nodes(self, within: float = 600.0) -> list[str]:
        """Nodes with an evicting notice in the last ``within`` seconds: going away, never targets."""
        rows = self._db().execute("SELECT DISTINCT node FROM notices WHERE evicting = 1 AND detected_at >= ?",
                                  (self.clock() - within,))
        return sorted(r["node"] for r in rows.fetchall())

    def at_risk(self, kinds: list[str] | tuple[str, ...], within: float) -> dict[str, dict]:
        """Nodes with an early warning (a notice of one of ``kinds`` that does not take the node away) noticed in the
        last ``within`` seconds: ``{node: {notice_id, kind, provider, since}}``, the newest warning per node."""
        if not kinds:
            return {}
        marks = ",".join("?" for _ in kinds)
        rows = self._db().execute(
            f"SELECT node, notice_id, kind, provider, detected_at FROM notices WHERE evicting = 0 AND kind IN ({marks})"
            " AND detected_at >= ? ORDER BY detected_at", (*kinds, self.clock() - within)).fetchall()
        return {r["node"]: {"notice_id": r["notice_id"], "kind": r["kind"], "provider": r["provider"],
                            "since": r["detected_at"]} for r in rows}

    def signalled_at(self, notice_id: str | None) -> float | None:
        """When the node's agent asked the workloads to checkpoint for this notice (None: it did not say)."""
        row = self._db().execute("SELECT signalled_at FROM notices WHERE notice_id = ?", (notice_id,)).fetchone()
        return row["signalled_at"] if row else None

    def notice(self, notice_id: str | None) -> dict | None:
        if not notice_id:
            return None
        row = self._db().execute("SELECT * FROM notices WHERE notice_id = ?", (notice_id,)).fetchone()
        return dict(row) if row else None

    def notices(self, limit: int = 100) -> list[dict]:
        rows = self._db().execute("SELECT * FROM notices ORDER BY detected_at DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ migrations
    def open_migration(self, notice_id: str, source: str, notice_at: float | None, detected_at: float) -> tuple[bool, str]:
        """One migration per notice, and never two open at once for one source. Returns (created, id)."""
        with self._tx() as db:
            row = db.execute("SELECT migration_id FROM notices WHERE notice_id = ?", (notice_id,)).fetchone()
            if row is not None and row["migration_id"]:
                return False, row["migration_id"]
            open_row = db.execute("SELECT id FROM migrations WHERE source = ? AND state NOT IN ('running', 'failed')",
                                  (source,)).fetchone()
            if open_row is not None:
                db.execute("UPDATE notices SET migration_id = ? WHERE notice_id = ?", (open_row["id"], notice_id))
                return False, open_row["id"]
            now = self.clock()
            migration_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{source}-{uuid.uuid4().hex[:6]}"
            db.execute("INSERT INTO migrations (id, notice_id, source, state, fence, attempts, workloads, targets, steps,"
                       " notice_at, detected_at, created_at, updated_at) VALUES (?,?,?,?,0,0,'[]','{}','{}',?,?,?,?)",
                       (migration_id, notice_id, source, "noticed", notice_at, detected_at, now, now))
            db.execute("INSERT INTO transitions VALUES (?,?,?,?,?)", (migration_id, "noticed", 0, now, notice_id))
            db.execute("UPDATE notices SET migration_id = ? WHERE notice_id = ?", (migration_id, notice_id))
            return True, migration_id

    def claimable(self) -> list[dict]:
        """Open migrations nobody (alive) holds, oldest first."""
        now = self.clock()
        rows = self._db().execute("SELECT * FROM migrations WHERE state NOT IN ('running', 'failed') ORDER BY created_at")
        return [self._decode(r) for r in rows.fetchall() if self._free(r, now)]

    def _free(self, row: sqlite3.Row, now: float) -> bool:
        if row["owner"] is None or row["owner"] == self.owner:
            return row["owner"] is None
        if row["lease_until"] is None or row["lease_until"] < now:
            return True
        # A watcher on this host that has died (pid gone or reused) holds nothing, whatever its lease says.
        return row["owner_host"] == self.host and _ticks(row["owner_pid"]) != row["owner_ticks"]

    def claim(self, migration_id: str) -> int:
        """Take the migration for this watcher; returns the new fence. Raises Fenced when another holds it."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM migrations WHERE id = ?", (migration_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no migration {migration_id} in {self.path}")
            if row["state"] in TERMINAL:
                raise Fenced(f"migration {migration_id} is already {row['state']}")
            if row["owner"] != self.owner and not self._free(row, self.clock()):
                raise Fenced(f"migration {migration_id} is held by {row['owner']} until {row['lease_until']:.0f}")
            fence = row["fence"] + 1
            db.execute("UPDATE migrations SET fence = ?, owner = ?, owner_host = ?, owner_pid = ?, owner_ticks = ?,"
                       " lease_until = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                       (fence, self.owner, self.host, self.pid, self.ticks, self.clock() + self.lease, self.clock(),
                        migration_id))
            db.execute("INSERT INTO transitions VALUES (?,?,?,?,?)",
                       (migration_id, row["state"], fence, self.clock(), f"claimed by {self.owner}"))
            return fence

    def renew(self, migration_id: str, fence: int) -> None:
        with self._tx() as db:
            self._check_fence(db, migration_id, fence)
            db.execute("UPDATE migrations SET lease_until = ? WHERE id = ?", (self.clock() + self.lease, migration_id))

    def _check_fence(self, db: sqlite3.Connection, migration_id: str, fence: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM migrations WHERE id = ?", (migration_id,)).fetchone()
        if row is not None and row["state"] in TERMINAL:
            raise LedgerError(f"migration {migration_id} is already {row['state']}")
        if row is None or row["fence"] != fence or row["owner"] != self.owner:
            raise Fenced(f"migration {migration_id}: fence {fence} is stale (now {row['fence'] if row else '?'}, "
                         f"held by {row['owner'] if row else '?'})")
        return row

    # ------------------------------------------------------------------ workloads and replicas
    def workload_seen(self, name: str, node: str, spec: dict, gpus: int) -> None:
        """A running workload, as its node reported it (a workload that moved changes node, its replica stays)."""
        with self._tx() as db:
            row = db.execute("SELECT node FROM workloads WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO workloads (name, node, spec, gpus, seen_at) VALUES (?,?,?,?,?)",
                           (name, node, json.dumps(spec, sort_keys=True), int(gpus), self.clock()))
            else:
                moved = row["node"] != node
                db.execute("UPDATE workloads SET node = ?, spec = ?, gpus = ?, seen_at = ?"
                           + (", " + _FORGET_REPLICA if moved else "") + " WHERE name = ?",
                           (node, json.dumps(spec, sort_keys=True), int(gpus), self.clock(), name))

    def workload_moved(self, name: str, node: str) -> bool:
        """A migration left ``name`` running on ``node``: the known location follows it at once (not at the next
        listing), so a recovery or a later eviction looks for it where it runs. Its replica is forgotten when the
        node changed (replication picks a new one). True when a known workload changed node."""
        with self._tx() as db:
            cur = db.execute("UPDATE workloads SET node = ?, seen_at = ?, replica_root = NULL, " + _FORGET_REPLICA
                             + " WHERE name = ? AND node != ?", (node, self.clock(), name, node))
            return cur.rowcount > 0

    def workload_gone(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM workloads WHERE name = ?", (name,))

    def set_replica(self, name: str, replica: str | None, gpus: list[int] | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE workloads SET replica = ?, replica_gpus = ?, replica_step = NULL, replica_mtime = NULL, "
                       "replicated_at = NULL, replica_root = NULL WHERE name = ?",
                       (replica, json.dumps(gpus) if gpus is not None else None, name))

    def replicated(self, name: str, done: dict) -> None:
        """One replication round's result for a workload (``replicate_done`` of the replicate playbook)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM workloads WHERE name = ?", (name,)).fetchone()
            if row is None:
                return
            updates: dict[str, Any] = {"source_step": done.get("source_step"), "source_mtime": done.get("source_mtime"),
                                       "error": done.get("error") or None}
            if done.get("replicated"):
                updates.update({"replica_step": int(done["step"]),
                                "replica_mtime": done.get("replica_mtime", done.get("source_mtime")),
                                "replicated_at": done.get("replicated_at") or self.clock(), "replica_bytes": done.get("bytes"),
                                "replica_root": done.get("replica_root")})
            assignments = ", ".join(f"{k} = ?" for k in updates)
            db.execute(f"UPDATE workloads SET {assignments} WHERE name = ?", (*updates.values(), name))

    def workloads(self, node: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM workloads", ()
        if node is not None:
            sql, args = sql + " WHERE node = ?", (node,)
        out = []
        for row in self._db().execute(sql + " ORDER BY name", args).fetchall():
            item = dict(row)
            item["spec"] = json.loads(item["spec"])
            item["replica_gpus"] = json.loads(item["replica_gpus"]) if item["replica_gpus"] else None
            out.append(item)
        return out

    # ------------------------------------------------------------------ what the plan against the deadline uses
    KEEP_MEASUREMENTS = 20  # per kind and key: the planner reads the last few

    def measure(self, rows: list[dict]) -> None:
        """Measurements (``kind, key, value, bytes, at``: see planner); only the newest few per kind and key kept."""
        with self._tx() as db:
            for row in rows:
                db.execute("INSERT INTO measurements (kind, key, value, bytes, at) VALUES (?,?,?,?,?)",
                           (row["kind"], row["key"], float(row["value"]), row.get("bytes"), float(row["at"])))
                db.execute("DELETE FROM measurements WHERE kind = ? AND key = ? AND rowid NOT IN (SELECT rowid FROM "
                           "measurements WHERE kind = ? AND key = ? ORDER BY at DESC LIMIT ?)",
                           (row["kind"], row["key"], row["kind"], row["key"], self.KEEP_MEASUREMENTS))

    def measurements(self) -> list[dict]:
        return [dict(r) for r in self._db().execute("SELECT kind, key, value, bytes, at FROM measurements ORDER BY at")]

    def store_replicated(self, name: str, store: str, step: int | None, size: int | None, at: float | None,
                         error: str | None) -> None:
        """What a workload's agent reports of its replica in object storage (the newest step published there)."""
        with self._tx() as db:
            db.execute("INSERT INTO store_replicas (name, store, step, bytes, at, error) VALUES (?,?,?,?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET store = excluded.store, error = excluded.error, "
                       "step = COALESCE(excluded.step, store_replicas.step), "
                       "bytes = COALESCE(excluded.bytes, store_replicas.bytes), at = COALESCE(excluded.at, store_replicas.at)",
                       (name, store, step, size, at, error))

    def store_replicas(self) -> dict[str, dict]:
        return {r["name"]: dict(r) for r in self._db().execute("SELECT * FROM store_replicas")}

    def save_plan(self, migration_id: str, plan: dict) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO plans (migration_id, plan, made_at) VALUES (?,?,?)",
                       (migration_id, json.dumps(plan, sort_keys=True), self.clock()))

    def plan(self, migration_id: str) -> dict | None:
        row = self._db().execute("SELECT plan FROM plans WHERE migration_id = ?", (migration_id,)).fetchone()
        return json.loads(row["plan"]) if row else None

    # ------------------------------------------------------------------ lost nodes and fences
    def probe_result(self, node: str, reachable: bool) -> None:
        """A probe reached the node, or could not; remembers since when it has been unreachable."""
        now = self.clock()
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO node_health (node) VALUES (?)", (node,))
            if reachable:
                db.execute("UPDATE node_health SET unreachable_since = NULL WHERE node = ?", (node,))
            else:
                db.execute("UPDATE node_health SET unreachable_since = COALESCE(unreachable_since, ?) WHERE node = ?",
                           (now, node))

    def health(self) -> dict[str, dict]:
        return {r["node"]: dict(r) for r in self._db().execute("SELECT * FROM node_health").fetchall()}

    def declare_lost(self, node: str) -> bool:
        """Mark the node lost (once per disappearance). Returns True when it was not lost before."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO node_health (node) VALUES (?)", (node,))
            row = db.execute("SELECT lost_at FROM node_health WHERE node = ?", (node,)).fetchone()
            if row["lost_at"] is not None:
                return False
            db.execute("UPDATE node_health SET lost_at = ?, returned_at = NULL WHERE node = ?", (self.clock(), node))
            return True

    def lost_nodes(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT node FROM node_health WHERE lost_at IS NOT NULL").fetchall()]

    def node_returned(self, node: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE node_health SET lost_at = NULL, returned_at = ?, unreachable_since = NULL WHERE node = ?",
                       (self.clock(), node))

    def fence(self, node: str, workload: str, migration_id: str | None) -> None:
        """The copy of ``workload`` on ``node`` may never run again (until a migration moves it back there)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO fences VALUES (?,?,?,?,NULL)", (node, workload, migration_id, self.clock()))

    def fences(self, node: str | None = None, pending_only: bool = False) -> list[dict]:
        sql, args = "SELECT * FROM fences WHERE 1 = 1", []
        if node is not None:
            sql, args = sql + " AND node = ?", [node]
        if pending_only:
            sql += " AND applied_at IS NULL"
        return [dict(r) for r in self._db().execute(sql + " ORDER BY created_at", args).fetchall()]

    def fence_applied(self, node: str, workload: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE fences SET applied_at = ? WHERE node = ? AND workload = ?", (self.clock(), node, workload))

    def unfence(self, node: str, workload: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM fences WHERE node = ? AND workload = ?", (node, workload))

    def note_job(self, migration_id: str, fence: int, job: int) -> None:
        """Remember the controller job that runs this migration (AWX mode), under the caller's fence."""
        with self._tx() as db:
            self._check_fence(db, migration_id, fence)
            db.execute("INSERT INTO controller_jobs VALUES (?,?,?,?)", (migration_id, fence, int(job), self.clock()))

    def last_job(self, migration_id: str) -> int | None:
        """The newest controller job launched for this migration, or None."""
        row = self._db().execute("SELECT job FROM controller_jobs WHERE migration_id = ? ORDER BY launched_at DESC, rowid DESC "
                              "LIMIT 1", (migration_id,)).fetchone()
        return int(row[0]) if row else None

    def advance(self, migration_id: str, fence: int, state: str, detail: str | None = None, **fields: Any) -> bool:
        """Move forward to ``state`` (never back; ``failed`` from anywhere) and store ``fields``
        (workloads, targets, steps are merged). Returns False when it was already at or past ``state``."""
        if state not in ORDER:
            raise LedgerError(f"unknown migration state {state!r}; states: {', '.join(STATES)}")
        with self._tx() as db:
            row = self._check_fence(db, migration_id, fence)
            now = self.clock()
            updates: dict[str, Any] = {"updated_at": now}
            if "workloads" in fields:
                merged = list(dict.fromkeys(json.loads(row["workloads"]) + list(fields.pop("workloads"))))
                updates["workloads"] = json.dumps(merged)
            for key in ("targets", "steps"):
                if key in fields:
                    merged_map = dict(json.loads(row[key]), **fields.pop(key))
                    updates[key] = json.dumps(merged_map, sort_keys=True)
            for key in ("error", "record"):
                if key in fields:
                    value = fields.pop(key)
                    updates[key] = value if isinstance(value, str) or value is None else json.dumps(value, sort_keys=True)
            if fields:
                raise LedgerError(f"unknown migration fields: {', '.join(sorted(fields))}")
            moved = state == "failed" or ORDER[state] > ORDER[row["state"]]
            if moved:
                updates["state"] = state
                if state in TERMINAL:
                    updates["finished_at"] = now
                    updates["owner"] = None
                db.execute("INSERT INTO transitions VALUES (?,?,?,?,?)", (migration_id, state, fence, now, detail))
            assignments = ", ".join(f"{k} = ?" for k in updates)
            db.execute(f"UPDATE migrations SET {assignments} WHERE id = ?", (*updates.values(), migration_id))
            return moved

    def release(self, migration_id: str, fence: int) -> None:
        """Let go of an unfinished migration (this watcher is stopping); another may claim it at once."""
        with self._tx() as db:
            row = db.execute("SELECT fence, owner FROM migrations WHERE id = ?", (migration_id,)).fetchone()
            if row is not None and row["fence"] == fence and row["owner"] == self.owner:
                db.execute("UPDATE migrations SET owner = NULL, lease_until = NULL WHERE id = ?", (migration_id,))

    def migration(self, migration_id: str) -> dict:
        row = self._db().execute("SELECT * FROM migrations WHERE id = ?", (migration_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no migration {migration_id} in {self.path}")
        return self._decode(row)

    def migrations(self, limit: int = 100, open_only: bool = False) -> list[dict]:
        where = "WHERE state NOT IN ('running', 'failed') " if open_only else ""
        rows = self._db().execute(f"SELECT * FROM migrations {where}ORDER BY created_at DESC LIMIT ?", (limit,))
        return [self._decode(r) for r in rows.fetchall()]

    def transitions(self, migration_id: str) -> list[dict]:
        rows = self._db().execute("SELECT * FROM transitions WHERE migration_id = ? ORDER BY rowid", (migration_id,))
        return [dict(r) for r in rows.fetchall()]

    @staticmethod
    def _decode(row: sqlite3.Row) -> dict:
        out = dict(row)
        for key in ("workloads", "targets", "steps", "record"):
            if out.get(key):
                out[key] = json.loads(out[key])
        return out

    # ------------------------------------------------------------------ nodes
    def heartbeat(self, node: str, via: str, blind: bool, error: str | None = None, provider: str | None = None,
                  agent_version: str | None = None, at: float | None = None) -> tuple[bool, bool]:
        """Note a node's heartbeat (agent) or probe (sweep). Returns (was_blind, is_blind)."""
        at = self.clock() if at is None else at
        column = "last_heartbeat_at" if via == "agent" else "last_probe_at"
        with self._tx() as db:
            row = db.execute("SELECT * FROM nodes WHERE node = ?", (node,)).fetchone()
            was_blind = bool(row and row["blind"])
            blind_since = (row["blind_since"] if was_blind else at) if blind else None
            if row is None:
                db.execute("INSERT INTO nodes (node) VALUES (?)", (node,))
            db.execute(f"UPDATE nodes SET {column} = ?, blind = ?, blind_since = ?, error = ?, via = ?,"
                       " provider = COALESCE(?, provider), agent_version = COALESCE(?, agent_version) WHERE node = ?",
                       (at, int(blind), blind_since, error, via, provider, agent_version, node))
            return was_blind, blind

    def nodes(self) -> list[dict]:
        return [dict(r) for r in self._db().execute("SELECT * FROM nodes ORDER BY node").fetchall()]

    # ------------------------------------------------------------------ replay protection, alerts
    def seen_nonce(self, nonce: str, sent_at: float, window: float = 300.0) -> bool:
        """Record a push nonce; True when it was seen before (a replay). Old nonces are forgotten."""
        with self._tx() as db:
            db.execute("DELETE FROM nonces WHERE sent_at < ?", (self.clock() - 2 * window,))
            try:
                db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, sent_at))
            except sqlite3.IntegrityError:
                return True
            return False

    def claim_alert(self, key: str, payload: dict) -> bool:
        """True the first time ``key`` is seen: exactly one alert per event, across restarts."""
        with self._tx() as db:
            try:
                db.execute("INSERT INTO alerts VALUES (?, ?, ?)", (key, self.clock(), json.dumps(payload, sort_keys=True)))
            except sqlite3.IntegrityError:
                return False
            return True

    def alerts(self) -> list[dict]:
        return [dict(r) for r in self._db().execute("SELECT * FROM alerts ORDER BY created_at").fetchall()]
