"""Target ranking and reservations: deterministic, policy-ordered, and never the same GPUs twice."""

from __future__ import annotations

import json
import threading

import pytest

from ansible_collections.spot.migration.plugins.filter.pick_target import pick_target
from ansible_collections.spot.migration.plugins.filter.rebase_paths import rebase_paths
from ansible_collections.spot.migration.plugins.module_utils._placement import (
    PlacementError, rank_candidates, release, renew, reserve)


def cand(host, free, lifecycle="spot", memory=80000, **more):
    gpus = [{"index": i, "memory_free_mb": memory} for i in range(4)]
    return dict({"host": host, "free_gpus": free, "gpus": gpus, "lifecycle": lifecycle}, **more)


def test_on_demand_first_then_memory_then_name():
    ranked = rank_candidates([cand("b", [0, 1]), cand("a", [0, 1]), cand("z", [0], lifecycle="on-demand"),
                              cand("c", [0, 1, 2])], gpus=1)[0]
    assert [r["host"] for r in ranked] == ["z", "c", "a", "b"]


def test_a_node_at_risk_comes_last_of_its_kind_and_is_still_taken():
    candidates = [cand("a", [0, 1, 2], at_risk=True), cand("b", [0]), cand("s", [0], lifecycle="on-demand", at_risk=True)]
    ranked = rank_candidates(candidates, gpus=1)[0]
    assert [(r["host"], r["at_risk"]) for r in ranked] == [("s", True), ("b", False), ("a", True)]
    assert pick_target([cand("a", [0], at_risk=True)], gpus=1)["target"] == "a"


@pytest.mark.parametrize("candidate, reason", [
    (cand("src", [0, 1]), "excluded"),
    (cand("ev", [0, 1], evicting=True), "eviction notice of its own"),
    (cand("bl", [0, 1], blind=True, error="GET ...: HTTP 500"), "blind: GET ...: HTTP 500"),
    (cand("small", [0]), "1 usable free GPU(s), 2 needed"),
    (cand("lowmem", [0, 1], memory=1000), "0 usable free GPU(s), 2 needed"),
])
def test_rejections_say_why(candidate, reason):
    ranked, rejected = rank_candidates([candidate], gpus=2, min_free_memory_mb=4000, exclude=["src"])
    assert ranked == [] and reason in rejected[0]["reason"]


def test_filter_returns_target_and_reasons():
    result = pick_target([cand("a", [2, 3]), cand("b", [])], gpus=2)
    assert result["target"] == "a" and result["gpus"] == [2, 3] and result["rejected"][0]["host"] == "b"
    assert pick_target([], gpus=1)["target"] is None


def test_reservations_keep_concurrent_migrations_apart(tmp_path):
    book = str(tmp_path / "res.json")
    candidates = [cand("standby", [0, 1], lifecycle="on-demand")]
    results = []
    threads = [threading.Thread(target=lambda o=o: results.append(reserve(book, o, candidates, gpus=1)))
               for o in ("m1/job", "m2/job")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["gpus"][0] for r in results) == [0, 1]
    with pytest.raises(PlacementError, match="no target has capacity"):
        reserve(book, "m3/job", candidates, gpus=1)
    m1_gpu = reserve(book, "m1/job", candidates, gpus=1)
    assert m1_gpu["changed"] is False
    assert release(book, "m1/job")["changed"] is True and release(book, "m1/job")["changed"] is False
    assert reserve(book, "m3/job", candidates, gpus=1)["gpus"] == m1_gpu["gpus"], "the released GPU is free again"
    assert set(json.loads((tmp_path / "res.json").read_text())) == {"m2/job", "m3/job"}


def test_reservations_expire(tmp_path):
    book = str(tmp_path / "res.json")
    now = [1000.0]
    reserve(book, "old", [cand("s", [0])], gpus=1, ttl=10, clock=lambda: now[0])
    now[0] += 11
    assert reserve(book, "new", [cand("s", [0])], gpus=1, clock=lambda: now[0])["gpus"] == [0]


def test_named_target_must_qualify(tmp_path):
    with pytest.raises(PlacementError, match="target b cannot take the workload: 0 usable free GPU"):
        reserve(str(tmp_path / "r.json"), "o", [cand("a", [0]), cand("b", [])], gpus=1, target="b")


@pytest.mark.parametrize("value, expected", [
    ("/n1/ck/job", "/n2/ck/job"), ("/n1/ck", "/n2/ck"), ("/n1/ckx/job", "/n1/ckx/job"),
    ("--dir=/n1/ck/job", "--dir=/n2/ck/job"), (["--x", "/n1/ck/a"], ["--x", "/n2/ck/a"]),
    ({"checkpoint_dir": "/n1/ck/j", "n": 3}, {"checkpoint_dir": "/n2/ck/j", "n": 3}),
])
def test_rebase_paths(value, expected):
    assert rebase_paths(value, "/n1/ck/", "/n2/ck") == expected
    assert rebase_paths(value, "", "/n2/ck") == value


def test_a_migration_adopts_the_pre_reserved_target_or_chooses_afresh(tmp_path):
    path = str(tmp_path / "res.json")
    candidates = [cand("standby1", [0, 1], "on-demand"), cand("node2", [0, 1])]
    pre = reserve(path, "replica/train", candidates, gpus=1, exclude=["node1"])
    assert pre["target"] == "standby1" and pre["gpus"] == [0]
    # Another workload's migration cannot take those GPUs meanwhile.
    other = reserve(path, "m-1/other", candidates, gpus=2, exclude=["node1"])
    assert other["target"] == "node2"
    taken = reserve(path, "m-2/train", candidates, gpus=1, exclude=["node1"], adopt="replica/train")
    assert taken["adopted"] == "replica/train" and taken["target"] == "standby1" and taken["gpus"] == [0]
    book = json.loads((tmp_path / "res.json").read_text())
    assert "replica/train" not in book and book["m-2/train"]["adopted_from"] == "replica/train"
    # Gone bad (the node now has a notice of its own): left alone, a target is chosen as usual.
    reserve(path, "replica/b", candidates, gpus=1, exclude=["node1"])
    bad = [cand("standby1", [0, 1], "on-demand", evicting=True), cand("node3", [0, 1])]
    fresh = reserve(path, "m-3/b", bad, gpus=1, exclude=["node1"], adopt="replica/b")
    assert "adopted" not in fresh and fresh["target"] == "node3"


def test_renew_extends_a_reservation_and_says_when_it_is_gone(tmp_path):
    path = str(tmp_path / "res.json")
    now = [1000.0]
    reserve(path, "replica/x", [cand("standby1", [0], "on-demand")], ttl=10, clock=lambda: now[0])
    now[0] = 1009.0
    assert renew(path, "replica/x", ttl=10, clock=lambda: now[0])["expires"] == 1019.0
    now[0] = 1030.0
    assert renew(path, "replica/x", ttl=10, clock=lambda: now[0]) is None


# ----------------------------------------------------------------------------------- container images

@pytest.mark.parametrize("a, b, same", [
    ("trainer", "localhost/trainer:latest", True),
    ("docker.io/library/trainer:1", "trainer:1", True),
    ("trainer:1", "trainer:2", False),
    ("registry.example.com/ml/trainer:1", "ml/trainer:1", False),
    ("registry.example.com:5000/trainer", "registry.example.com:5000/trainer:latest", True),
    ("trainer@sha256:abc", "trainer@sha256:abc", True),
])
def test_image_names_as_podman_and_docker_resolve_them(a, b, same):
    from ansible_collections.spot.migration.plugins.module_utils._placement import image_key

    assert (image_key(a) == image_key(b)) is same


def test_a_container_workload_goes_only_where_its_image_is(tmp_path):
    from ansible_collections.spot.migration.plugins.module_utils._placement import reserve_many

    path = str(tmp_path / "r.json")
    cands = [cand("big", [0, 1, 2, 3], lifecycle="on-demand", images=["localhost/other:latest"]),
             cand("has", [0], images=["localhost/trainer:v1"]),
             cand("unknown", [0], images=None)]  # no container CLI there: not judged by images
    got = reserve_many(path, [{"owner": "m/a", "gpus": 1, "image": "trainer:v1"},
                              {"owner": "m/b", "gpus": 1, "image": "trainer:v1"},
                              {"owner": "m/c", "gpus": 1}], cands)
    assert [(r["owner"], r["target"]) for r in got] == [("m/a", "has"), ("m/b", "unknown"), ("m/c", "big")]
    assert {"host": "big", "reason": "the container image trainer:v1 is not on it"} in got[0]["rejected"]


def test_no_candidate_with_the_image_is_a_clear_error_and_nothing_reserved(tmp_path):
    from ansible_collections.spot.migration.plugins.module_utils._placement import reserve_many

    path = tmp_path / "r.json"
    (got,) = reserve_many(str(path), [{"owner": "m/a", "gpus": 1, "image": "ghcr.io/x/trainer:7"}],
                          [cand("n1", [0], images=[]), cand("n2", [0], images=["trainer:7"])])
    assert got["target"] is None and "no candidate holds the container image ghcr.io/x/trainer:7 (n1, n2)" in got["error"]
    assert [r["host"] for r in got["rejected"]] == ["n1", "n2"]
    assert not path.exists() or "m/a" not in path.read_text()
