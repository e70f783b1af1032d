"""The watcher's Prometheus metrics (prometheus-client), in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120)
DURATION_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800)
MiB = 2 ** 20
THROUGHPUT_BUCKETS = tuple(x * MiB for x in (1, 5, 10, 25, 50, 100, 200, 400, 800, 1600))

# Every label value a counter can take that is known in advance, exported at 0 from the start: a Prometheus rate()
# or increase() over a series that appears only at its first event misses that event, and alert rules on "failed"
# cannot tell "never failed" from "not exported".
KNOWN_LABELS = {
    "alerts": [("sent",), ("failed",)],
    "migrations": [("running",), ("failed",)],
    "sweeps": [("ok",), ("failed",), ("error",)],
    "replications": [("copied",), ("current",), ("failed",), ("error",)],
    "rejected": [(r,) for r in ("unsigned", "malformed", "forged", "stale", "replayed")],
    "deliveries": [("push",), ("sweep",)],
    "transfer_bytes": [("migration",)],
    "plan_choices": [("emergency",), ("newest",), ("replica",)],
    "plan_fallbacks": [("replica",)],
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.notices = Counter("spot_notices", "Notices received (first delivery only)", ["provider", "kind", "via"], registry=r)
        self.deliveries = Counter("spot_notice_deliveries", "Notice deliveries, repeats included", ["via"], registry=r)
        self.rejected = Counter("spot_pushes_rejected", "Agent pushes refused", ["reason"], registry=r)
        self.migrations = Counter("spot_migrations", "Migrations finished", ["outcome"], registry=r)
        self.in_flight = Gauge("spot_migrations_in_flight", "Migrations being run by this watcher", registry=r)
        self.detection = Histogram("spot_detection_latency_seconds", "Notice time to the watcher having it",
                                   ["via"], buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("spot_migration_duration_seconds", "Notice to workload running on the target",
                                  buckets=DURATION_BUCKETS, registry=r)
        self.blind = Gauge("spot_blind_nodes", "Nodes whose metadata service cannot be read", registry=r)
        self.silent = Gauge("spot_silent_agents", "Nodes whose agent heartbeats stopped", registry=r)
        self.sweeps = Counter("spot_probe_sweeps", "Fallback probe sweeps run", ["outcome"], registry=r)
        self.alerts = Counter("spot_alerts", "Alerts sent to webhooks", ["outcome"], registry=r)
        self.replications = Counter("spot_replications", "Replication results per workload and round",
                                    ["outcome"], registry=r)
        self.replica_step = Gauge("spot_replica_step", "Newest replicated (verified, published) step", ["workload"],
                                  registry=r)
        self.replica_lag_steps = Gauge("spot_replica_lag_steps", "Newest step on the source minus the replicated one",
                                       ["workload"], registry=r)
        self.replica_lag_seconds = Gauge("spot_replica_lag_seconds",
                                         "Age of the replica against the newest checkpoint on the source", ["workload"],
                                         registry=r)
        self.at_risk = Gauge("spot_at_risk_nodes", "Nodes with an early warning (rebalance recommendation, maintenance "
                             "event) within warnings.hold: not taken away, but at risk", registry=r)
        self.lost = Gauge("spot_lost_nodes", "Nodes declared lost (no notice, unreachable past the grace period)",
                          registry=r)
        self.transfer_bytes = Counter("spot_transfer_bytes", "Checkpoint bytes moved to a target", ["kind"], registry=r)
        self.transfer_seconds = Counter("spot_transfer_seconds", "Seconds spent moving checkpoints to targets",
                                        ["kind"], registry=r)
        self.transfer_throughput = Histogram("spot_transfer_throughput_bytes_per_second",
                                             "Throughput of each checkpoint transfer of a migration (bytes / s)",
                                             buckets=THROUGHPUT_BUCKETS, registry=r)
        self.plan_choices = Counter("spot_plan_choices", "How the plan against the deadline chose to resume each workload",
                                    ["choice"], registry=r)
        self.plan_fallbacks = Counter("spot_plan_fallbacks", "Copies given up mid-way for the replica on the target",
                                      ["to"], registry=r)
        self.plan_error = Histogram("spot_plan_prediction_error_seconds",
                                    "Notice to running on the target, actual minus the plan's prediction (chosen way)",
                                    buckets=(-20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 60), registry=r)
        for name, values in KNOWN_LABELS.items():
            for labels in values:
                getattr(self, name).labels(*labels)
        self.transfer_seconds.labels("migration")

    def transferred(self, rows: list[dict], epoch) -> None:
        """Bytes, seconds and throughput of each transfer in a migration's record rows (``epoch`` turns the rows'
        ISO 8601 times into seconds)."""
        for row in rows or []:
            started, done = row.get("transfer_started_at"), row.get("transferred_at")
            size = row.get("bytes")
            if not (started and done and isinstance(size, (int, float)) and size > 0):
                continue
            seconds = max(0.0, epoch(done) - epoch(started))
            self.transfer_bytes.labels("migration").inc(size)
            self.transfer_seconds.labels("migration").inc(seconds)
            if seconds > 0:
                self.transfer_throughput.observe(size / seconds)

    def set_replicas(self, workloads: list[dict], now: float) -> None:
        for gauge in (self.replica_step, self.replica_lag_steps, self.replica_lag_seconds):
            gauge.clear()
        for w in workloads:
            lag_steps, lag_seconds = replica_lag(w, now)
            if w.get("replica_step") is not None:
                self.replica_step.labels(w["name"]).set(w["replica_step"])
            if lag_steps is not None:
                self.replica_lag_steps.labels(w["name"]).set(lag_steps)
            if lag_seconds is not None:
                self.replica_lag_seconds.labels(w["name"]).set(lag_seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def replica_lag(w: dict, now: float) -> tuple[int | None, float | None]:
    """(steps, seconds) the replica is behind the newest complete checkpoint on the source; None when there is no
    replica yet. Seconds: how much newer the source's newest checkpoint is than the replicated one (0 when equal)."""
    if w.get("replica_step") is None:
        return None, None
    steps = max(0, (w.get("source_step") or 0) - w["replica_step"])
    if w.get("source_mtime") is not None and w.get("replica_mtime") is not None:
        return steps, round(max(0.0, w["source_mtime"] - w["replica_mtime"]), 3)
    return steps, None
