"""The plan against the deadline: at a notice, for each workload on the node, when each way of resuming it would have
it running again on its target, predicted from what the watcher has measured, and the choice.

The ways, fewest steps lost first:

- ``emergency``: wait for the checkpoint the agent asked for at the notice and move it (nothing lost);
- ``newest``: move the newest complete checkpoint on the node's disk at once (the steps since it are lost);
- ``replica``: resume from the verified replica already on the replica node, which is the target (the steps since the
  replica are lost; nothing moves); when that node is itself evicting or holds none, from the workload's replica in
  object storage (``replication.store``), restored on whichever target the migration gets.

The choice is the first way predicted to have the job running before the window closes (the notice's deadline less
the safety margin). When none is, the quickest. When a way cannot be predicted (nothing measured yet) the plan is
today's behaviour, ``emergency``, and says so. Whatever moves a checkpoint falls back to the replica on its target as
soon as its copy cannot end within the window (``fallback: replica``).

What is measured (the ledger's ``measurements``): ``throughput`` per node pair (bytes/s, from the agents' replication
and from migrations' transfers), ``ready`` per workload (detection -> its emergency checkpoint taken and the push
begun), ``overhead`` (detection -> the release step: the run's start, the checkpoint request, the reservation) and
``place`` per target (copy complete -> verified, renamed and started). Medians of the last few, so one slow outlier
does not decide.
"""

from __future__ import annotations

import statistics
from typing import Any

OPTIONS = ("emergency", "newest", "replica")
RECENT = 5                  # the last few measurements of a kind and key count
VERIFY_BYTES_PER_S = 300e6  # for a replica bigger than anything placed on that target yet: hashing it again
# Until a migration has measured them: the run's start-up (detection -> the release step) and placing on the target
# (verify, rename, start: a second and the hashing). The transfer, which decides, is never assumed: without a measured
# throughput the plan is today's behaviour.
DEFAULT_OVERHEAD = 3.0
DEFAULT_PLACE = 1.0


def median(values: list[float]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.median(values) if values else None


class Measured:
    """What the planner knows, from ``ledger.measurements()`` rows (``kind, key, value, bytes, at``)."""

    def __init__(self, rows: list[dict]):
        self.by: dict[tuple[str, str], list[dict]] = {}
        for row in sorted(rows, key=lambda r: r["at"]):
            self.by.setdefault((row["kind"], row["key"]), []).append(row)

    def recent(self, kind: str, key: str) -> list[dict]:
        return self.by.get((kind, key), [])[-RECENT:]

    def value(self, kind: str, key: str) -> float | None:
        return median([r["value"] for r in self.recent(kind, key)])

    def throughput(self, source: str, target: str | None) -> tuple[float | None, str]:
        """Bytes per second from ``source`` to ``target``: that pair, else from ``source`` to anywhere."""
        if target:
            pair = self.value("throughput", f"{source}>{target}")
            if pair:
                return pair, f"{source}->{target}"
        rows = [r for (kind, key), found in self.by.items() if kind == "throughput" and key.startswith(source + ">")
                and not key.endswith(">store") for r in found[-RECENT:]]  # uploads to a bucket are not node to node
        value = median([r["value"] for r in rows])
        return (value, f"{source}->any") if value else (None, "")

    def store_rate(self, source: str) -> tuple[float | None, str]:
        """Bytes per second of a restore from object storage, estimated by the uploads' (``<node>>store``): this
        node's, else any node's. Restores are not measured apart yet."""
        value = self.value("throughput", f"{source}>store")
        if value:
            return value, f"{source}'s uploads"
        rows = [r for (kind, key), found in self.by.items() if kind == "throughput" and key.endswith(">store")
                for r in found[-RECENT:]]
        value = median([r["value"] for r in rows])
        return (value, "the fleet's uploads") if value else (None, "")

    def place(self, target: str | None, size: int) -> float | None:
        """Seconds to verify, rename and start ``size`` bytes on ``target`` (that target's, else any)."""
        rows = self.recent("place", target or "") or [r for (kind, _key), found in self.by.items() if kind == "place"
                                                      for r in found[-RECENT:]]
        if not rows:
            return DEFAULT_PLACE + size / VERIFY_BYTES_PER_S
        seconds = median([r["value"] for r in rows]) or 0.0
        seen = median([r["bytes"] or 0 for r in rows]) or 0.0
        return seconds + max(0.0, size - seen) / VERIFY_BYTES_PER_S


def window(notice: dict, detected_at: float, now: float, default_deadline: float, safety_margin: float) -> float:
    """Seconds from ``now`` until the window closes: the notice's seconds left when it was seen (or
    ``default_deadline`` for a notice without one - GCP's preemption), less what has passed since and the margin."""
    left = notice.get("seconds_left")
    try:
        left = float(left) if left is not None else float(default_deadline)
    except (TypeError, ValueError):
        left = float(default_deadline)
    return left - max(0.0, now - detected_at) - float(safety_margin)


def plan_workload(workload: dict, source: str, window_s: float, measured: Measured,
                  unavailable: frozenset | set = frozenset()) -> dict[str, Any]:
    """The ways of resuming one workload (a ledger ``workloads`` row, with ``store_step`` and ``store_bytes`` where it
    has a replica in object storage) with their predictions and the choice; times count from the notice's
    detection, like the window. ``unavailable``: nodes that cannot be the target (evicting too)."""
    replica = workload.get("replica")
    if replica in unavailable:
        replica = None  # its copy goes with it
    store_step = workload.get("store_step")
    size = int(workload.get("replica_bytes") or workload.get("store_bytes") or 0)
    target = replica  # the migration adopts the replica node's reservation when the node still qualifies
    throughput, via = measured.throughput(source, target)
    overhead = measured.value("overhead", "*")
    assumed = [] if overhead is not None else ["start-up"]
    overhead = overhead if overhead is not None else DEFAULT_OVERHEAD
    ready = measured.value("ready", workload["name"])
    if not measured.recent("place", target or "") and not any(k == "place" for k, _ in measured.by):
        assumed.append("placing")
    place = measured.place(target, size)
    transfer = size / throughput if throughput and size else None
    options: list[dict[str, Any]] = []
    note = f" ({' and '.join(assumed)} not measured yet: assumed)" if assumed else ""

    def add(how: str, predicted: float | None, resumes_from: Any, why: str) -> None:
        options.append({"from": how, "predicted_s": None if predicted is None else round(predicted, 2),
                        "fits": predicted is not None and predicted <= window_s, "resumes_from_step": resumes_from,
                        "why": why})

    if transfer is None:
        add("emergency", None, "emergency", "no transfer measured yet from %s to predict it by" % source)
    else:
        add("emergency", (ready if ready is not None else overhead) + transfer + place, "emergency",
            f"{'ready' if ready is not None else 'start-up'} + {size / 2**20:.0f} MiB at {throughput / 2**20:.1f} MiB/s "
            f"({via}) + verify and start{note}")
    source_step = workload.get("source_step")
    replica_step = workload.get("replica_step") if replica else None
    stored = store_step is not None and (replica_step is None or store_step > replica_step)
    newest_replica = store_step if stored else replica_step
    if source_step is not None and (newest_replica is None or source_step > newest_replica):
        add("newest", None if transfer is None else overhead + transfer + place, source_step,
            f"the newest complete checkpoint on disk, moved at once{note}")
    if stored:
        rate, rate_via = measured.store_rate(source)
        stored_size = int(workload.get("store_bytes") or size)
        add("replica", None if not rate else overhead + stored_size / rate + place, store_step,
            f"the replica of step {store_step} in object storage, restored on the target"
            + (f" at {rate / 2**20:.1f} MiB/s ({rate_via})" if rate else ": no upload measured to predict it by")
            + note)
    elif replica and replica_step is not None:
        add("replica", overhead + place, replica_step, f"the replica of step {replica_step} on {replica}, nothing "
            f"moved{note}")
    chosen, reason = choose(options, window_s)
    fallback = "replica" if chosen in ("emergency", "newest") and any(o["from"] == "replica" for o in options) else None
    return {"workload": workload["name"], "window_s": round(window_s, 2), "target": target, "bytes": size,
            "options": options, "choice": chosen, "fallback": fallback, "reason": reason}


def choose(options: list[dict], window_s: float) -> tuple[str, str]:
    """The first way (fewest steps lost) predicted to fit the window; the quickest when none does; today's
    behaviour (``emergency``) when the first way cannot be predicted."""
    first = options[0]
    if first["predicted_s"] is None:
        return first["from"], f"as before the plan: {first['why']}"
    for option in options:
        if option["fits"]:
            return option["from"], ("predicted to be running in %.1f s, within the %.1f s window"
                                    % (option["predicted_s"], window_s))
    known = [o for o in options if o["predicted_s"] is not None]
    quickest = min(known, key=lambda o: o["predicted_s"])
    return quickest["from"], ("no way fits the %.1f s window; the quickest, predicted %.1f s"
                              % (window_s, quickest["predicted_s"]))


def plan_source(workloads: list[dict], source: str, notice: dict, detected_at: float, now: float,
                measurements: list[dict], default_deadline: float = 30.0, safety_margin: float = 5.0,
                unavailable: frozenset | set = frozenset()) -> dict[str, Any]:
    """The plan for every workload on ``source``: ``{window_s, workloads: {name: plan_workload}, choices}`` where
    ``choices`` is what the migrate playbook takes (``{name: {from, fallback}}``)."""
    measured = Measured(measurements)
    window_s = window(notice, detected_at, detected_at, default_deadline, safety_margin)
    plans = {w["name"]: plan_workload(w, source, window_s, measured, frozenset(unavailable)) for w in workloads}
    return {"window_s": round(window_s, 2), "made_at": now, "workloads": plans,
            "choices": {n: {"from": p["choice"], "fallback": p["fallback"]} for n, p in plans.items()}}


def measurements_from_record(record: dict, detected_at: float | None, to_epoch) -> list[dict]:
    """What a finished migration's record teaches: per workload that moved, the transfer's throughput (source >
    target), how long its emergency checkpoint took to be ready, how long the target took to place it, and the run's
    start-up overhead. ``to_epoch`` parses the record's ISO times."""
    out = []
    for row in record.get("migrations") or []:
        at = to_epoch(row.get("started_on_target_at"))
        if at is None:
            continue
        started, sent = to_epoch(row.get("transfer_started_at")), to_epoch(row.get("transferred_at"))
        size = row.get("bytes") or 0
        if row.get("transfer") != "replica" and started and sent and sent > started and size:
            out.append({"kind": "throughput", "key": f"{row['source']}>{row['target']}", "value": size / (sent - started),
                        "bytes": size, "at": at})
        if sent:
            out.append({"kind": "place", "key": row["target"], "value": at - sent, "bytes": size, "at": at})
        base = detected_at or to_epoch(row.get("detected_at"))
        chosen = to_epoch(row.get("target_chosen_at"))
        if base and chosen and chosen >= base:
            out.append({"kind": "overhead", "key": "*", "value": chosen - base, "bytes": None, "at": at})
        if base and started and row.get("emergency_checkpoint_ok") and row.get("resume_choice") in (None, "emergency"):
            out.append({"kind": "ready", "key": row["workload"], "value": started - base, "bytes": size, "at": at})
    return out
