"""The migrate playbook's plan and the coarse steps' path checks: every value that becomes a path is refused where it
enters when it could leave its root (issue K1), hosts are checked against the inventory, a wave is planned per
source; the joint reservation never promises a GPU twice."""

from __future__ import annotations

import os

import pytest

from spot_migration import module_utils

plan_mod = module_utils("_plan")
mig = module_utils("_migration")
placement = module_utils("_placement")

GROUPS = {"all": ["node1", "node2", "standby1"], "spot": ["node1", "node2"], "standby": ["standby1"]}


@pytest.mark.parametrize("value", ["../../../x", "..", "a/b", "/abs", "x/../y", "-leading", "a..b", "a b", "a\0b",
                                   "x" * 161])
def test_hostile_migration_ids_are_refused_with_the_value(value):
    with pytest.raises(mig.MigrationError) as caught:
        plan_mod.plan({"source": "node1", "migration_id": value}, GROUPS)
    assert repr(value)[:40] in str(caught.value) or "migration_id" in str(caught.value)


@pytest.mark.parametrize("value", ["20261201T000000-node1-abc123", "m-1", "a.b:c+d"])
def test_good_ids_pass(value):
    assert plan_mod.plan({"source": "node1", "migration_id": value}, GROUPS)["by_source"]["node1"]["id"] == value


@pytest.mark.parametrize("variables, message", [
    ({"source": "nope"}, "source nope is not in the inventory"),
    ({"source": ""}, "source is required"),
    ({"source": "node1", "target": "ghost"}, "target ghost is not in the inventory"),
    ({"source": "node1", "transfer": "ftp"}, "transfer must be one of"),
    ({"source": "node1", "workloads": ["../x"]}, "workload name '../x' is not allowed"),
    ({"source": "node1", "fence_file": "relative/f"}, "fence_file 'relative/f' must be an absolute path"),
    ({"source": "node1", "prestaged": {"w": {"target": "standby1", "root": "/a/../../etc"}}}, "must be an absolute path"),
    ({"source": "node1", "include_stopped": True}, "include_stopped needs workloads"),
    ({"source": "node1", "deadline": "soon"}, "deadline must be a number"),
    ({"source": "node1", "alert_webhooks": ["file:///etc/passwd"]}, "is not an http(s) URL"),
    ({"source": "node1", "record_dir": "rel/dir"}, "must be an absolute path"),
    ({"source": ["node1", "node2"], "migration_id": "one"}, "a wave of 2 sources needs migrations"),
    ({"source": "node1", "migrations": {"node2": {}}}, "not among the sources"),
    ({"source": "node1", "at_risk_hosts": ["ghost"]}, "at_risk_hosts ghost is not in the inventory"),
    ({"source": "node1", "prestaged": {"w": {"store": "s3:b/../x"}}}, "prestaged w: object store 's3:b/../x'"),
    ({"source": "node1", "prestaged": {"w": {"store": "s3:b", "store_rclone": "rclone;x"}}}, "rclone program"),
])
def test_bad_variables_fail_naming_the_value(variables, message):
    with pytest.raises(mig.MigrationError) as caught:
        plan_mod.plan(variables, GROUPS)
    assert message in str(caught.value)


def test_a_wave_is_planned_per_source_and_candidates_leave_every_source_out():
    plan = plan_mod.plan({"source": "node1,node2", "migrations": {"node1": {"migration_id": "a"},
                                                                  "node2": {"migration_id": "b", "workloads": "w1, w2"}},
                          "workloads": ["w0"]}, GROUPS)
    assert plan["sources"] == ["node1", "node2"] and plan["candidates"] == ["standby1"]
    assert plan["by_source"]["node1"]["workloads"] == ["w0"] and plan["by_source"]["node2"]["workloads"] == ["w1", "w2"]
    assert [plan["by_source"][s]["id"] for s in plan["sources"]] == ["a", "b"]


WIDE = {"all": ["node1", "node2", "node3", "standby1", "standby2"], "spot": ["node1", "node2", "node3"],
        "standby": ["standby1", "standby2"]}


def test_nodes_at_risk_are_asked_last_and_marked_for_the_ranking():
    plan = plan_mod.plan({"source": "node1", "at_risk_hosts": ["standby1"]}, WIDE)
    assert plan["at_risk"] == ["standby1"] and plan["first_candidates"] == ["standby2"]
    assert plan["later_candidates"] == ["standby1", "node2", "node3"]
    described = {h: {"migrate_described": {"candidate": {"host": h, "free_gpus": [0], "gpus": [{"index": 0}],
                                                         "lifecycle": "on-demand"}}} for h in ("standby1", "standby2")}
    marked = {c["host"]: c["at_risk"] for c in plan_mod.candidates(plan, described, WIDE)}
    assert marked == {"standby1": True, "standby2": False}
    # Every preferred node at risk: they are still asked first (the spot nodes are no safer), nothing is dropped.
    both = plan_mod.plan({"source": "node1", "at_risk_hosts": ["standby1", "standby2"]}, WIDE)
    assert both["first_candidates"] == ["standby1", "standby2"] and both["candidates"] == plan["candidates"]
    # A pinned target is asked whatever its risk.
    pinned = plan_mod.plan({"source": "node1", "target": "standby1", "at_risk_hosts": ["standby1"]}, WIDE)
    assert pinned["first_candidates"] == ["standby1"]


def test_staging_and_final_paths_must_resolve_under_their_roots(tmp_path):
    root = tmp_path / "ck"
    root.mkdir()
    assert mig.staging_dir(str(root), "m-1") == str(root / ".spot-staging" / "m-1")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / ".spot-staging").symlink_to(outside)  # a planted link must not carry a removal out of the root
    with pytest.raises(mig.MigrationError, match="outside"):
        mig.staging_dir(str(root), "m-1")
    with pytest.raises(mig.MigrationError):
        mig.staging_dir("relative", "m-1")


def test_joint_reservation_never_promises_a_gpu_twice(tmp_path):
    path = str(tmp_path / "reservations.json")
    candidates = [{"host": "standby1", "free_gpus": [0, 1], "gpus": [{"index": 0}, {"index": 1}], "lifecycle": "on-demand"}]
    done = placement.reserve_many(path, [{"owner": "a/w1", "gpus": 1}, {"owner": "b/w2", "gpus": 1},
                                         {"owner": "c/w3", "gpus": 1}], candidates)
    got = [(r["target"], tuple(r["gpus"])) for r in done]
    assert got[0] != got[1] and got[0][0] == got[1][0] == "standby1"
    assert done[2]["target"] is None and "no target has capacity" in done[2]["error"]
    again = placement.reserve_many(path, [{"owner": "a/w1", "gpus": 1, "release_first": True, "exclude": ["standby1"]}],
                                   candidates)
    assert again[0]["target"] is None and not os.path.exists(path + ".tmp")


def test_a_superseded_fence_stops_before_the_source_stops_and_before_the_target_starts(tmp_path):
    fence = tmp_path / "fence"
    fence.write_text("3\n")
    variables = {"source": "node1", "migration_id": "m-1", "fence_file": str(fence), "migration_fence": "3"}
    the_plan = plan_mod.plan(variables, GROUPS)
    reservations = [{"owner": "m-1/w", "name": "w", "source": "node1", "target": "standby1", "gpus": [0]}]
    assert set(plan_mod.assignments(the_plan, "node1", reservations, {})) == {"w"}
    moved = {"node1": [{"name": "w", "source": "node1", "target": "standby1", "transfer": "rsync", "staged": True}]}
    assert [p["name"] for p in plan_mod.placements(moved, "standby1", the_plan)] == ["w"]
    fence.write_text("4\n")  # another watcher took the migration over
    with pytest.raises(plan_mod.MigrationError, match=r"fenced: migration m-1 .* token 3\); stopping before anything changes"):
        plan_mod.assignments(the_plan, "node1", reservations, {})
    with pytest.raises(plan_mod.MigrationError, match="stopping before w starts"):
        plan_mod.placements(moved, "standby1", the_plan)
    # A source with nothing to do is not failed for it.
    assert plan_mod.assignments(the_plan, "node1", [], {}) == {}


def test_a_replica_in_object_storage_goes_with_any_target_the_node_replica_only_with_its_own():
    variables = {"source": "node1", "migration_id": "m-2", "prestaged": {
        "w": {"target": "standby1", "root": "/r/w", "step": 600, "store": "s3:bucket/spot", "store_step": 600,
              "store_transfers": 8, "store_rclone": "rclone"},
        "v": {"target": "standby1", "root": "/r/v", "step": 300}}}
    the_plan = plan_mod.plan(variables, GROUPS)
    reservations = [{"owner": "m-2/w", "name": "w", "source": "node1", "target": "node2", "gpus": [0]},
                    {"owner": "m-2/v", "name": "v", "source": "node1", "target": "node2", "gpus": [1]}]
    got = plan_mod.assignments(the_plan, "node1", reservations, {})
    assert got["w"]["replica_root"] is None and got["w"]["store"] == "s3:bucket/spot" and got["w"]["store_transfers"] == 8
    assert got["v"]["replica_root"] is None and "store" not in got["v"]
    assert mig.check_choices({"w": {"from": "replica"}, "v": {"from": "replica"}}, got) == {
        "w": {"from": "replica", "fallback": None, "note": None},
        "v": {"from": "newest", "fallback": None,
              "note": "no replica on the target: the newest complete checkpoint moves instead"}}
    rows = plan_mod.moved(the_plan, "node1", {}, {"sealed": [{"name": "w", "transfer": "replica", "target": "node2"}]},
                          assigned=got)
    assert rows[0]["store"] == "s3:bucket/spot" and rows[0]["store_rclone"] == "rclone", rows


def test_only_the_pinned_target_is_asked():
    assert plan_mod.plan({"source": "node1"}, GROUPS)["candidates"] == ["standby1", "node2"]
    assert plan_mod.plan({"source": "node1", "target": "node2"}, GROUPS)["candidates"] == ["node2"]
    # A resumed run whose every workload already has its target reserved asks only those targets.
    resumed = {"source": "node1", "workloads": ["w"], "include_stopped": True, "pinned_targets": {"w": "standby1"}}
    assert plan_mod.plan(resumed, GROUPS)["candidates"] == ["standby1"]
    assert plan_mod.plan(dict(resumed, workloads=["w", "v"]), GROUPS)["candidates"] == ["standby1", "node2"]


def test_standby_nodes_and_replica_targets_are_asked_first_the_others_only_when_short():
    groups = {"all": ["node1", "node2", "node3", "standby1", "standby2"], "spot": ["node1", "node2", "node3"],
              "standby": ["standby1", "standby2"]}
    p = plan_mod.plan({"source": "node1"}, groups)
    assert p["candidates"] == ["standby1", "standby2", "node2", "node3"]
    assert p["first_candidates"] == ["standby1", "standby2"] and p["later_candidates"] == ["node2", "node3"]
    # A replica already waiting on a spot node: that node is asked with the standby nodes.
    staged = {"source": "node1", "prestaged": {"w": {"target": "node3", "root": "/r", "step": 5}}}
    assert plan_mod.plan(staged, groups)["first_candidates"] == ["standby1", "standby2", "node3"]
    # No standby group, or a pinned target: everything at once, nothing later.
    spot_only = {"all": ["node1", "node2"], "spot": ["node1", "node2"]}
    assert plan_mod.plan({"source": "node1"}, spot_only)["first_candidates"] == ["node2"]
    pinned = plan_mod.plan({"source": "node1", "target": "node2"}, groups)
    assert pinned["first_candidates"] == ["node2"] and pinned["later_candidates"] == []
    # The second round asks again only for what the first could not place.
    checkpoints = {"node1": {"moving": [{"name": "a", "spec": {"gpus": [0]}}, {"name": "b", "spec": {"gpus": [0]}}]}}
    mid = p["by_source"]["node1"]["id"]
    assert [r["name"] for r in plan_mod.requests(p, checkpoints)] == ["a", "b"]
    first_round = [{"owner": f"{mid}/a", "target": "standby1", "error": None},
                   {"owner": f"{mid}/b", "target": None, "error": "no target has capacity"}]
    assert [r["name"] for r in plan_mod.requests(p, checkpoints, first_round)] == ["b"]
    # Candidates not asked are left out; ones described by a later loop (failover) count.
    described = {"standby1": {"migrate_described": {"candidate": {"host": "standby1", "free_gpus": [0]}}}}
    assert [c["host"] for c in plan_mod.candidates(p, described, groups)] == ["standby1"]
    more = [{"item": "node3", "candidate": {"host": "node3", "free_gpus": [1]}},
            {"item": "node2", "unreachable": True, "msg": "ssh: connect refused"}]
    got = plan_mod.candidates(p, described, groups, more)
    assert [(c["host"], c.get("blind", False)) for c in got] == [("standby1", False), ("node2", True), ("node3", False)]


def test_describe_is_blind_when_the_gpus_cannot_be_read():
    def broken():
        raise OSError("nvidia-smi: not found")
    out = mig.target_describe("standby1", "on-demand", broken, lambda: {"evicting": False, "error": None})
    assert out["candidate"] == {"host": "standby1", "free_gpus": [], "gpus": [], "lifecycle": "on-demand",
                                "evicting": False, "blind": True, "error": "GPUs unreadable: nvidia-smi: not found",
                                "images": None}
    out = mig.target_describe("node2", "spot", broken, None)
    assert out["notice"] is None and out["candidate"]["blind"]


def test_describe_lists_the_images_a_target_holds():
    from ansible_collections.spot.migration.plugins.module_utils._migration import list_images, target_describe

    calls = []

    def run(argv):
        calls.append(argv)
        if argv[0] == "/no/podman":
            return 127, "", "not found"
        return 0, "localhost/trainer:v1\n<none>:<none>\ndocker.io/library/busybox:latest\nlocalhost/trainer:v1\n", ""

    found = list_images(run, [None, "/no/podman", "/usr/bin/docker"])
    assert found == ["docker.io/library/busybox:latest", "localhost/trainer:v1"]
    assert calls[-1] == ["/usr/bin/docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]
    assert list_images(run, [None]) is None  # no container CLI: not judged by images

    def no_gpus():
        raise RuntimeError("no GPUs")

    described = target_describe("n1", "spot", no_gpus, images=lambda: ["localhost/trainer:v1"])
    assert described["candidate"]["images"] == ["localhost/trainer:v1"] and described["candidate"]["blind"]


def test_requests_carry_the_container_image():
    from ansible_collections.spot.migration.plugins.module_utils import _plan

    the_plan = {"sources": ["n1"], "target": None,
                "by_source": {"n1": {"id": "m1", "pinned_targets": {}}}}
    checkpoints = {"n1": {"moving": [{"name": "a", "runtime": "podman", "spec": {"image": "trainer:v1", "gpus": [0]}},
                                     {"name": "b", "runtime": "process", "spec": {"gpus": [1]}}]}}
    got = _plan.requests(the_plan, checkpoints)
    assert [(r["name"], r["image"]) for r in got] == [("a", "trainer:v1"), ("b", None)]


def test_the_failover_runs_only_where_the_first_transfer_failed():
    host_vars = {
        "a": {"migrate_release": {"failed_transfers": ["job"]}},
        "b": {"migrate_release": {"failed_transfers": []}},
        "c": {"migrate_release": {"failed_transfers": ["x"]}, "migrate_relay": {"failed_transfers": []}},  # relayed fine
        "d": {"migrate_release": {"failed_transfers": []}, "migrate_relay": {"failed_transfers": ["y"]}},
        "e": {"migrate_release": {"skipped": True}},
        "f": {"migrate_release": {"failed_transfers": ["z"]}, "migrate_relay": {"skipped": True}},
    }
    assert plan_mod.failed_transfers(host_vars, ["a", "b", "c", "d", "e", "f", "ghost"]) == ["a", "d", "f"]
