"""The plan against the deadline: predictions from measurements, and the choice (watch/planner.py)."""

from __future__ import annotations

import pytest

from spot_migration.watch import planner
from spot_migration.watch.intake import to_epoch

GIB = 2 ** 30


def measured(throughput=None, overhead=2.0, ready=None, place=1.0, place_bytes=GIB, pair="node1>standby1"):
    rows = []
    if throughput is not None:
        rows.append({"kind": "throughput", "key": pair, "value": throughput, "bytes": GIB, "at": 1.0})
    if overhead is not None:
        rows.append({"kind": "overhead", "key": "*", "value": overhead, "bytes": None, "at": 1.0})
    if ready is not None:
        rows.append({"kind": "ready", "key": "job", "value": ready, "bytes": GIB, "at": 1.0})
    if place is not None:
        rows.append({"kind": "place", "key": "standby1", "value": place, "bytes": place_bytes, "at": 1.0})
    return rows


def workload(replica="standby1", replica_step=600, source_step=600, size=GIB):
    return {"name": "job", "replica": replica, "replica_step": replica_step, "source_step": source_step,
            "replica_bytes": size}


def plan(rows, notice=None, w=None, **kw):
    return planner.plan_source([w or workload()], "node1", notice if notice is not None else {"seconds_left": 30},
                               100.0, 100.5, rows, **kw)


@pytest.mark.parametrize("rows, w, choice, fallback, why", [
    # Nothing measured: today's behaviour, and it says so.
    ([], None, "emergency", "replica", "as before the plan: no transfer measured yet from node1"),
    # 1 GiB at 200 MiB/s: 2 + 5.1 + 1 s in a 25 s window.
    (measured(200 * 2**20, ready=4.0), None, "emergency", "replica", "within the 25.0 s window"),
    # 1 GiB at 20 MiB/s cannot make it (51 s); the newest on disk is the replica's step: the replica.
    (measured(20 * 2**20, ready=4.0), None, "replica", None, "within the 25.0 s window"),
    # A newer checkpoint on disk than the replica, still too slow to move: the replica.
    (measured(20 * 2**20, ready=4.0), workload(source_step=900), "replica", None, "within"),
    # Fast enough to move the newest on disk, not to wait for the emergency one (ready only after 24 s).
    (measured(400 * 2**20, ready=24.0), workload(source_step=900), "newest", "replica", "within"),
    # No replica anywhere: only moving is possible; too slow either way, the quickest (no waiting for the write).
    (measured(20 * 2**20, ready=4.0), workload(replica=None, replica_step=None), "newest", None, "no way fits"),
])
def test_the_choice_is_the_fewest_steps_lost_that_fits_the_window(rows, w, choice, fallback, why):
    made = plan(rows, w=w)
    job = made["workloads"]["job"]
    assert job["choice"] == choice and job["fallback"] == fallback, job
    assert why in job["reason"], job["reason"]
    assert made["choices"] == {"job": {"from": choice, "fallback": fallback}}
    assert [o["from"] for o in job["options"]][0] == "emergency"


def test_a_replica_node_evicting_too_leaves_the_replica_in_object_storage():
    """The wave takes the replica node as well: its copy is no way; the bucket's is, predicted at the uploads' rate,
    and it fits where moving 1 GiB at 20 MiB/s does not."""
    rows = measured(20 * 2**20, ready=4.0) + [{"kind": "throughput", "key": "node1>store", "value": 200 * 2**20,
                                               "bytes": GIB, "at": 1.0}]
    w = dict(workload(source_step=900), store_step=600, store_bytes=GIB)
    job = plan(rows, w=w, unavailable={"standby1"})["workloads"]["job"]
    assert job["choice"] == "replica" and job["target"] is None, job
    [replica] = [o for o in job["options"] if o["from"] == "replica"]
    assert replica["resumes_from_step"] == 600 and "in object storage" in replica["why"], replica
    assert replica["predicted_s"] == pytest.approx(2.0 + 5.12 + 1.0, abs=0.05)
    # Without the bucket, the evicting replica node leaves nothing to resume from: only moving, too slow, quickest.
    alone = plan(rows, w=workload(source_step=900), unavailable={"standby1"})["workloads"]["job"]
    assert "replica" not in [o["from"] for o in alone["options"]] and alone["fallback"] is None, alone
    # An upload never measured: the bucket's way is listed, not predicted, and not chosen.
    unmeasured = plan(measured(20 * 2**20, ready=4.0), w=w, unavailable={"standby1"})["workloads"]["job"]
    [way] = [o for o in unmeasured["options"] if o["from"] == "replica"]
    assert way["predicted_s"] is None and "no upload measured" in way["why"] and unmeasured["choice"] != "replica"


def test_a_newer_replica_in_the_bucket_than_on_the_replica_node_is_the_one_counted():
    w = dict(workload(replica_step=300, source_step=900), store_step=600, store_bytes=GIB)
    rows = measured(20 * 2**20, ready=4.0) + [{"kind": "throughput", "key": "node2>store", "value": 100 * 2**20,
                                               "bytes": GIB, "at": 1.0}]
    job = plan(rows, w=w)["workloads"]["job"]
    [way] = [o for o in job["options"] if o["from"] == "replica"]
    assert way["resumes_from_step"] == 600 and "the fleet's uploads" in way["why"], way


def test_the_window_is_the_notice_seconds_left_less_the_margin_or_the_default_deadline():
    assert plan([], notice={"seconds_left": 120})["window_s"] == 115.0
    assert plan([], notice={"seconds_left": None})["window_s"] == 25.0  # GCP's preemption: no time given
    assert plan([], notice={}, default_deadline=40, safety_margin=10)["window_s"] == 30.0
    assert planner.window({"seconds_left": "soon"}, 0, 3, 30, 5) == 22.0


def test_predictions_use_the_pair_then_the_source_then_nothing():
    other = measured(100 * 2**20, pair="node1>node9")
    job = plan(other)["workloads"]["job"]
    emergency = job["options"][0]
    assert emergency["predicted_s"] == pytest.approx(2 + 10.24 + 1, abs=0.01)
    assert "node1->any" in emergency["why"]
    assert plan(measured(100 * 2**20, pair="node7>standby1"))["workloads"]["job"]["options"][0]["predicted_s"] is None


def test_medians_of_the_last_few_so_one_outlier_does_not_decide():
    rows = [{"kind": "throughput", "key": "node1>standby1", "value": v, "bytes": GIB, "at": float(i)}
            for i, v in enumerate([1e3, 2e8, 2e8, 2e8, 2e8, 1.0])]
    assert planner.Measured(rows).throughput("node1", "standby1")[0] == 2e8


def test_start_up_and_placing_are_assumed_until_measured_the_transfer_never():
    job = plan([{"kind": "throughput", "key": "node1>standby1", "value": 2**20, "bytes": GIB, "at": 1.0}])["workloads"]["job"]
    emergency, replica = job["options"][0], job["options"][-1]
    assert emergency["predicted_s"] == pytest.approx(3 + 1024 + 1 + GIB / 300e6, abs=0.01)
    assert "(start-up and placing not measured yet: assumed)" in emergency["why"]
    assert replica["from"] == "replica" and replica["predicted_s"] == pytest.approx(4 + GIB / 300e6, abs=0.01)
    assert job["choice"] == "replica"


def test_what_a_record_teaches():
    record = {"migrations": [{
        "workload": "job", "source": "node1", "target": "standby1", "bytes": 100 * 2**20, "transfer": "rsync",
        "detected_at": "2026-12-06T10:00:00Z", "target_chosen_at": "2026-12-06T10:00:02Z",
        "transfer_started_at": "2026-12-06T10:00:04Z", "transferred_at": "2026-12-06T10:00:06Z",
        "started_on_target_at": "2026-12-06T10:00:07Z", "emergency_checkpoint_ok": True, "resume_choice": None}]}
    got = {m["kind"]: m for m in planner.measurements_from_record(record, None, to_epoch)}
    assert got["throughput"]["key"] == "node1>standby1" and got["throughput"]["value"] == 50 * 2**20
    assert got["place"]["value"] == 1.0 and got["overhead"]["value"] == 2.0 and got["ready"]["value"] == 4.0
    replica = dict(record["migrations"][0], transfer="replica", resume_choice="replica", transfer_started_at=None,
                   transferred_at=None)
    kinds = [m["kind"] for m in planner.measurements_from_record({"migrations": [replica]}, None, to_epoch)]
    assert kinds == ["overhead"], "a resume from the replica moved nothing to measure"


def test_the_runner_plans_once_saves_the_plan_and_learns_from_the_record(tmp_path):
    from spot_migration.watch.config import WatchConfig
    from spot_migration.watch.ledger import Ledger
    from spot_migration.watch.metrics import Metrics
    from spot_migration.watch.runner import MigrationRunner

    ledger = Ledger(tmp_path / "ledger.sqlite")
    notice = {"notice_id": "gcp-1", "provider": "gcp", "kind": "preempt", "evicting": True, "seconds_left": None}
    ledger.record_notice("node1", notice, "push", 100.0)
    _new, mid = ledger.open_migration("gcp-1", "node1", 100.0, 100.0)
    ledger.workload_seen("job", "node1", {"name": "job"}, 1)
    ledger.set_replica("job", "standby1", [0])
    ledger.replicated("job", {"replicated": True, "step": 600, "bytes": GIB, "source_step": 600,
                              "replica_root": "/r/job"})
    ledger.measure(measured(20 * 2**20, ready=4.0))  # 1 GiB at 20 MiB/s: 51 s, GCP's window is 25 s
    runner = object.__new__(MigrationRunner)  # what _plan and _learn use
    runner.config, runner.ledger, runner.metrics, said = WatchConfig(), ledger, Metrics(), []
    runner.log = said.append
    m = ledger.migration(mid)
    made = runner._plan(m)
    assert made["choices"] == {"job": {"from": "replica", "fallback": None}}
    assert ledger.plan(mid)["choices"] == made["choices"] and runner._plan(m) == ledger.plan(mid), "made once"
    assert any("plan for job: replica" in line and "within the 25.0 s window" in line for line in said), said
    record = {"migrations": [{"workload": "job", "source": "node1", "target": "standby1", "bytes": 0,
                              "transfer": "replica", "resume_choice": "replica", "resumed_step": 600,
                              "target_chosen_at": "1970-01-01T00:01:42Z", "started_on_target_at": "1970-01-01T00:01:44Z"}]}
    runner._learn(mid, m, record)
    actual = ledger.plan(mid)["workloads"]["job"]["actual"]
    assert actual == {"from": "replica", "running_after_s": 4.0, "fell_back": None, "resumed_step": 600}
    assert [r for r in ledger.measurements() if r["kind"] == "overhead"][-1]["value"] == 2.0
    rendered = views_lines(ledger.plan(mid))
    assert "chose replica; ran replica, running after 4.0 s" in rendered[0] and "emergency 56.2 s, replica 3.0 s" in rendered[0]
    runner.config.migrate.plan = False
    assert runner._plan(dict(m, id="other")) is None


def views_lines(plan):
    from spot_migration.watch.views import plan_lines
    return plan_lines(plan)
