"""The watcher's Prometheus metrics (prometheus-client), in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120)
DURATION_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800)


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

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
