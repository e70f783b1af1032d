"""The watcher's metrics: every known counter series exported at 0 from the start, transfer bytes and throughput."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from spot_migration.watch.intake import to_epoch
from spot_migration.watch.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple, float]:
    body = metrics.render()[0]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_known_series_are_there_at_zero_before_any_event():
    got = samples(Metrics())
    for name, labels in (("spot_alerts_total", {"outcome": "failed"}), ("spot_alerts_total", {"outcome": "sent"}),
                         ("spot_migrations_total", {"outcome": "failed"}),
                         ("spot_migrations_total", {"outcome": "running"}),
                         ("spot_probe_sweeps_total", {"outcome": "error"}),
                         ("spot_replications_total", {"outcome": "failed"}),
                         ("spot_pushes_rejected_total", {"reason": "forged"}),
                         ("spot_transfer_bytes_total", {"kind": "migration"})):
        assert got[(name, tuple(sorted(labels.items())))] == 0.0, (name, labels)


def test_transfers_count_bytes_seconds_and_throughput():
    metrics = Metrics()
    rows = [{"bytes": 64 * 2**20, "transfer_started_at": "2026-12-04T10:00:00.000000Z",
             "transferred_at": "2026-12-04T10:00:02.000000Z"},
            {"bytes": 0, "transfer_started_at": "2026-12-04T10:00:00Z", "transferred_at": "2026-12-04T10:00:01Z"},
            {"bytes": 10, "transfer_started_at": None, "transferred_at": None}]  # never moved (shared, failed)
    metrics.transferred(rows, to_epoch)
    got = samples(metrics)
    assert got[("spot_transfer_bytes_total", (("kind", "migration"),))] == 64 * 2**20
    assert got[("spot_transfer_seconds_total", (("kind", "migration"),))] == 2.0
    assert got[("spot_transfer_throughput_bytes_per_second_count", ())] == 1
    assert got[("spot_transfer_throughput_bytes_per_second_sum", ())] == 32 * 2**20
