"""Gangs as data: the description each member carries (refused with the value at fault), the environment it gets,
the step every member holds, the layout after a migration, and the controller's plan of a gang migration."""

from __future__ import annotations

import json

import pytest

from ansible_collections.spot.migration.plugins.module_utils._gang import (
    GangError, check_gang, common_step, gang_env, member_name, new_layout)
from ansible_collections.spot.migration.plugins.module_utils._gang_plan import layout, placements, plan, record, requests
from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError
from ansible_collections.spot.migration.plugins.module_utils._placement import reserve_many
from ansible_collections.spot.migration.plugins.module_utils._workload import WorkloadError, build_spec

GANG = {"name": "ddp", "size": 2, "rank": 1, "master_addr": "10.0.0.1", "master_port": 29400,
        "members": ["a", "b"]}


def test_a_member_gets_the_rendezvous_in_its_environment():
    env = gang_env(GANG)
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "10.0.0.1"
    assert env["MASTER_PORT"] == "29400" and env["NODE_RANK"] == env["PET_NODE_RANK"] == "1"
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["SPOT_GANG_GENERATION"] == "0"
    torchrun = gang_env(dict(GANG, nproc_per_node=4))
    assert "RANK" not in torchrun and "WORLD_SIZE" not in torchrun, "torchrun numbers its own processes"
    assert torchrun["PET_NPROC_PER_NODE"] == "4" and torchrun["PET_NNODES"] == "2"


@pytest.mark.parametrize("change, message", [
    ({"name": "a b"}, "gang name 'a b' is not allowed"),
    ({"size": 0}, "gang size must be between 1 and 4096, not 0"),
    ({"rank": 2}, "gang rank must be between 0 and 1, not 2"),
    ({"rank": "x"}, "gang rank must be a whole number, not 'x'"),
    ({"rank": True}, "gang rank must be a whole number, not True"),
    ({"master_addr": "a;b"}, "gang master_addr 'a;b' is not a host name"),
    ({"master_port": 70000}, "gang master_port must be between 1 and 65535"),
    ({"members": ["a"]}, "gang ddp lists 1 members for size 2: a"),
    ({"members": ["a", "a"]}, "names a host twice"),
    ({"colour": "red"}, "gang has unknown keys colour"),
])
def test_a_bad_description_is_refused_with_the_value(change, message):
    with pytest.raises(GangError) as info:
        check_gang(dict(GANG, **change))
    assert message in str(info.value)


def test_the_workload_spec_carries_the_gang_and_its_environment():
    base = {"name": "ddp.1", "runtime": "process", "command": ["python3", "t.py"],
            "env": {"MASTER_ADDR": "mine", "OTHER": "1"}}
    spec = build_spec(dict(base, gang=GANG))
    assert spec["gang"]["rank"] == 1 and spec["env"]["MASTER_ADDR"] == "10.0.0.1" and spec["env"]["OTHER"] == "1"
    with pytest.raises(WorkloadError, match="member 1 of gang ddp: its name must be ddp.1"):
        build_spec(dict(base, name="ddp-one", gang=GANG))
    with pytest.raises(WorkloadError, match="workload ddp.1: gang rank must be"):
        build_spec(dict(base, gang=dict(GANG, rank=-1)))
    assert build_spec(dict(base, name="solo"))["gang"] is None


def test_the_gang_resumes_from_the_newest_step_every_member_holds():
    assert common_step({0: [80, 40, 120], 1: [40, 80], 2: [80]}) == 80
    with pytest.raises(GangError, match="no step is complete on every member"):
        common_step({0: [40], 1: [80]})


def test_the_new_layout_replaces_the_evicted_and_moves_the_master_with_member_0():
    new = new_layout(GANG, ["a"], {"a": "c"}, {"c": "10.0.0.3", "b": "10.0.0.2"})
    assert new["members"] == ["c", "b"] and new["master_addr"] == "10.0.0.3" and new["generation"] == 1
    assert "rank" not in new
    kept = new_layout(GANG, ["b"], {"b": "c"}, {"a": "10.0.0.1"})
    assert kept["members"] == ["a", "c"] and kept["master_addr"] == "10.0.0.1"
    with pytest.raises(GangError, match="no replacement for b"):
        new_layout(GANG, ["b"], {}, {})
    with pytest.raises(GangError, match="the replacement a of b is already a member"):
        new_layout(GANG, ["b"], {"b": "a"}, {})
    with pytest.raises(GangError, match="x is not a member of gang ddp"):
        new_layout(GANG, ["x"], {"x": "c"}, {})
    assert member_name("ddp", 3) == "ddp.3"


GROUPS = {"all": ["a", "b", "c", "d"], "spot": ["a", "b", "c"], "standby": ["d"]}


def _plan(**extra):
    return plan(dict({"gang": "ddp", "source": "b", "spot_reservation_file": "/r.json", "spot_record_dir": "/rec"},
                     **extra), GROUPS, now=0)


def _checkpointed(steps):
    spec = {"gang": dict(GANG, rank=0), "gpus": [0], "checkpoint_dir": "/ck"}
    return {host: {"gang_checkpoint": {"member": {"name": f"ddp.{rank}", "steps": s,
                                                  "spec": dict(spec, gang=dict(GANG, rank=rank))}},
                   "ansible_host": f"10.0.0.{rank + 1}", "spot_checkpoint_root": f"/root-{host}"}
            for rank, (host, s) in enumerate(steps.items())}


def test_the_plan_checks_its_variables():
    p = _plan(gang_members=["a", "b"])
    assert p["sources"] == ["b"] and p["members"] == ["a", "b"] and p["pool"] == ["d", "a", "c"]
    assert p["id"] == "gang-ddp-19700101T000000"
    with pytest.raises(MigrationError, match="needs -e gang=NAME"):
        _plan(gang=None)
    with pytest.raises(MigrationError, match="source nowhere is not in the inventory"):
        _plan(source="nowhere")


def test_a_replacement_per_evicted_member_never_on_a_member_and_never_two_on_one_node(tmp_path):
    p = _plan(source=["a", "b"], gang_members=["a", "b"])
    hv = _checkpointed({"a": [40, 80], "b": [80]})
    asked = requests(p, hv)
    assert [(r["name"], r["exclude"], r["apart"]) for r in asked] == [
        ("ddp.0", ["a", "b"], "gang/ddp"), ("ddp.1", ["a", "b"], "gang/ddp")]
    candidates = [{"host": h, "free_gpus": [0, 1], "gpus": [{"index": 0}, {"index": 1}], "lifecycle": "spot"}
                  for h in ("c", "d")]
    got = reserve_many(str(tmp_path / "r.json"), asked, candidates)
    assert sorted(r["target"] for r in got) == ["c", "d"], "two members never share a replacement"
    hv.update({"c": {"ansible_host": "10.0.0.3"}, "d": {"ansible_host": "10.0.0.4"}})
    out = layout(p, hv, got)
    assert out["step"] == 80 and out["old_members"] == ["a", "b"] and set(out["new_members"]) == {"c", "d"}
    assert out["gang"]["master_addr"] == hv[out["new_members"][0]]["ansible_host"]


def test_nothing_is_stopped_without_a_replacement_or_a_common_step():
    p = _plan(gang_members=["a", "b"])
    with pytest.raises(MigrationError, match=r"no replacement for ddp.1 \(on b\): full; nothing was stopped"):
        layout(p, _checkpointed({"a": [80], "b": [80]}), [{"name": "ddp.1", "source": "b", "error": "full"}])
    with pytest.raises(MigrationError, match="no step is complete on every member.*nothing was stopped"):
        layout(p, _checkpointed({"a": [40], "b": [80]}), [])
    failed = _checkpointed({"a": [80], "b": [80]})
    failed["a"]["gang_checkpoint"] = {"failed": True, "msg": "wrote no checkpoint"}
    with pytest.raises(MigrationError, match="could not checkpoint together \\(a: wrote no checkpoint\\)"):
        layout(p, failed, [])


def test_each_new_member_starts_from_its_own_part_with_the_new_rendezvous():
    p = _plan(gang_members=["a", "b"])
    hv = _checkpointed({"a": [80], "b": [80]})
    hv["c"] = {"ansible_host": "10.0.0.3", "spot_checkpoint_root": "/root-c"}
    out = layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "c", "gpus": [1], "owner": "x/ddp.1"}])
    for rank, host in enumerate(["a", "b"]):
        hv[host]["gang_release"] = {"sealed": {"checkpoint": f"/root-{host}/ddp/step-00000080", "is_dir": True,
                                               "step": 80, "spec": hv[host]["gang_checkpoint"]["member"]["spec"],
                                               "staged": "/root-c/.spot-staging/x/step-00000080" if rank else None}}
    [survivor] = placements(out, p, hv, "a")
    [moved] = placements(out, p, hv, "c")
    assert survivor["transfer"] == "shared" and survivor["checkpoint"] == "/root-a/ddp/step-00000080"
    assert survivor["gpus"] == [0] and survivor["spec"]["gang"]["rank"] == 0
    assert moved["transfer"] == "rsync" and moved["gpus"] == [1] and moved["source_root"] == "/root-b"
    assert moved["spec"]["gang"] == dict(out["gang"], rank=1) and moved["spec"]["gang"]["generation"] == 1
    hv["b"]["gang_release"] = {"failed": True, "msg": "holds no complete checkpoint of step 80"}
    with pytest.raises(MigrationError, match="does not start again: b: holds no complete checkpoint"):
        placements(out, p, hv, "a")


def test_a_run_no_longer_holding_its_fence_starts_nothing(tmp_path):
    fence = tmp_path / "fence"
    fence.write_text("7\n")
    p = _plan(gang_members=["a", "b"], migration_fence=6, fence_file=str(fence))
    hv = _checkpointed({"a": [80], "b": [80]})
    hv["c"] = {"ansible_host": "10.0.0.3"}
    out = layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "c", "gpus": [1]}])
    with pytest.raises(MigrationError, match="fenced"):
        placements(out, p, hv, "a")


def test_the_record_has_a_row_per_member_and_the_problems():
    p = _plan(gang_members=["a", "b"])
    hv = _checkpointed({"a": [80], "b": [80]})
    hv["c"] = {"ansible_host": "10.0.0.3"}
    out = layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "c", "gpus": [1]}])
    hv["a"].update({"migrate_placed": {"placed": {"ddp.0": {"checkpoint": "/x", "started_at": "t"}}},
                    "migrate_progress": {"progress": {"ddp.0": {"first_new_step": 120}}}})
    hv["c"].update({"migrate_placed": {"failed": True, "msg": "manifest mismatch"}})
    made = record(p, out, hv, False, finished_at=0)
    assert [(m["workload"], m["source"], m["target"], m["outcome"]) for m in made["migrations"]] == [
        ("ddp.0", "a", "a", "resumed"), ("ddp.1", "b", "c", "failed")]
    assert made["problems"] == ["ddp.1 (b -> c): manifest mismatch"] and made["generation"] == 1
    json.dumps(made)


def test_a_lost_member_restarts_on_its_replica_node_from_a_step_everyone_holds():
    spec_b = {"gang": dict(GANG, rank=1), "gpus": [1], "checkpoint_dir": "/root-b/ddp"}
    lost = {"b": {"name": "ddp.1", "host": "d", "root": "/root-d/.spot-replicas/ddp.1", "spec": spec_b}}
    with pytest.raises(MigrationError, match="give gang_members"):
        _plan(lost=True, lost_replicas=lost)
    with pytest.raises(MigrationError, match="lost_replicas needs name, host, root and spec"):
        _plan(lost=True, gang_members=["a", "b"], lost_replicas={"b": {"name": "ddp.1"}})
    p = _plan(lost=True, gang_members=["a", "b"], lost_replicas=lost)
    hv = _checkpointed({"a": [120, 80, 40]})
    hv["d"] = {"ansible_host": "10.0.0.4", "gang_replica": {"replicas": {"ddp.1": {"steps": [80, 40]}}}}
    [asked] = requests(p, hv)
    assert (asked["target"], asked["adopt"], asked["gpus"]) == ("d", "replica/ddp.1", 1)
    out = layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "d", "gpus": [0], "owner": "x/ddp.1"}])
    assert out["step"] == 80 and out["new_members"] == ["a", "d"] and out["released"] == ["a"]
    hv["a"]["gang_release"] = {"sealed": {"checkpoint": "/root-a/ddp/step-00000080", "is_dir": True, "step": 80,
                                          "spec": hv["a"]["gang_checkpoint"]["member"]["spec"]}}
    [placed] = placements(out, p, hv, "d")
    assert placed["transfer"] == "replica" and placed["replica_step"] == 80 and placed["gpus"] == [0]
    assert placed["replica_root"] == lost["b"]["root"] and placed["spec"]["gang"]["rank"] == 1
    assert placed["spec"]["gang"]["master_addr"] == "10.0.0.1"
    hv["d"]["gang_replica"] = {"replicas": {"ddp.1": {"steps": [160]}}}
    with pytest.raises(MigrationError, match="no step is complete on every member"):
        layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "d", "gpus": [0]}])


def test_status_shows_a_gang_as_one_unit_with_its_members():
    from io import StringIO

    from rich.console import Console

    from spot_migration.watch import views
    rows = [{"name": "ddp.1", "node": "c", "spec": {"gang": dict(GANG, rank=1, generation=2, master_addr="10.0.0.9")}},
            {"name": "ddp.0", "node": "a", "spec": {"gang": dict(GANG, rank=0, generation=1)}},
            {"name": "solo", "node": "b", "spec": {}}]
    assert views.gangs(rows) == {"ddp": {"size": 2, "generation": 2, "master": "10.0.0.9:29400",
                                         "members": {0: {"workload": "ddp.0", "node": "a"},
                                                     1: {"workload": "ddp.1", "node": "c"}}}}
    out = StringIO()
    views.render_status({"nodes": [], "in_flight": [], "workloads": None, "replicas": [], "gangs": views.gangs(rows[:1])},
                        Console(file=out, width=160))
    assert "ddp" in out.getvalue() and "1: c (1 of 2 known)" in out.getvalue()


def test_a_resumed_run_that_finds_the_gang_restarted_stops_nothing_and_starts_what_is_missing():
    p = _plan(gang_members=["a", "b"], migration_id="m1.ddp")
    hv = _checkpointed({"a": [120, 80], "b": [80]})
    # a runs generation 1 (members a, c) from step 80; b (evicted) still has its stopped member of generation 0.
    newer = dict(GANG, rank=0, generation=1, members=["a", "c"])
    hv["a"]["gang_checkpoint"]["member"].update(running=True, spec={
        "gang": newer, "gpus": [0], "checkpoint_dir": "/root-a/ddp", "resume_from": "/root-a/ddp/step-00000080"})
    hv["b"]["gang_checkpoint"]["member"]["spec"]["checkpoint_dir"] = "/root-b/ddp"
    hv["c"] = {"ansible_host": "10.0.0.3", "spot_checkpoint_root": "/root-c"}
    out = layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "c", "gpus": [1], "owner": "m1.ddp/ddp.1"}])
    assert out["done"] and out["released"] == [] and out["step"] == 80 and out["gang"]["generation"] == 1
    assert placements(out, p, hv, "a") == [], "a survivor already running the new generation is left alone"
    [start] = placements(out, p, hv, "c")
    assert start["transfer"] == "rsync" and start["staged"] == "/root-c/.spot-staging/m1.ddp/step-00000080"
    assert start["gpus"] == [1] and start["spec"]["gang"] == dict(out["gang"], rank=1)
    with pytest.raises(MigrationError, match="not reserved for it now"):
        layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "d", "gpus": [1]}])


def test_on_shared_storage_nothing_moves_one_member_seals_and_a_lost_member_needs_no_replica():
    shared = dict(GANG, layout="shared")
    spec = {"gang": dict(shared, rank=1), "gpus": [1], "checkpoint_dir": "/nfs/ddp"}
    p = _plan(lost=True, gang_members=["a", "b"], lost_replicas={"b": {"name": "ddp.1", "spec": spec}})
    hv = _checkpointed({"a": [120, 80]})
    hv["a"]["gang_checkpoint"]["member"]["spec"] = dict(spec, gang=dict(shared, rank=0))
    hv["c"] = {"ansible_host": "10.0.0.3"}
    assert requests(p, hv)[0].get("target") is None, "no replica node to pin: any candidate"
    out = layout(p, hv, [{"name": "ddp.1", "source": "b", "target": "c", "gpus": [0], "owner": "x/ddp.1"}])
    assert out["shared"] and out["sealer"] == "a" and out["step"] == 120 and out["released"] == ["a"]
    hv["a"]["gang_release"] = {"sealed": {"checkpoint": "/nfs/ddp/step-00000120", "is_dir": True, "step": 120,
                                          "spec": hv["a"]["gang_checkpoint"]["member"]["spec"]}}
    [placed] = placements(out, p, hv, "c")
    assert placed["transfer"] == "shared" and placed["checkpoint"] == "/nfs/ddp/step-00000120"
    assert placed["spec"]["checkpoint_dir"] == "/nfs/ddp" and placed["gpus"] == [0]
    assert placed["spec"]["gang"]["rank"] == 1 and placed["spec"]["gang"]["layout"] == "shared"
    assert gang_env(dict(shared, rank=0))["SPOT_GANG_LAYOUT"] == "shared"
    with pytest.raises(GangError, match="gang layout must be member"):
        check_gang(dict(GANG, layout="nfs"))
