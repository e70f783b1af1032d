"""The end of a migrate run: reservations released, records written whole, ids checked first, check mode."""

from __future__ import annotations

import json

import pytest

from spot_migration import module_utils

record = module_utils("_record")
placement = module_utils("_placement")
plan_mod = module_utils("_plan")

CANDIDATES = [{"host": "standby1", "free_gpus": [0, 1], "gpus": [], "lifecycle": "on-demand", "evicting": False,
               "blind": False}]


def params(tmp_path, records, release=()):
    return {"records": records, "record_dir": str(tmp_path / "records"),
            "reservation_file": str(tmp_path / "res.json"), "release": list(release)}


def test_releases_and_writes_every_record_that_moved_something(tmp_path):
    got = placement.reserve_many(str(tmp_path / "res.json"), [{"owner": "m-1/w", "gpus": 1}], CANDIDATES)
    records = [{"id": "m-1", "source": "node1", "migrations": [{"workload": "w", "outcome": "running"}]},
               {"id": "m-2", "source": "node2", "migrations": []}]
    out = record.finish(params(tmp_path, records, got), check_mode=False)
    assert out["released"] == 1 and out["changed"]
    assert out["written"] == [str(tmp_path / "records" / "m-1.json")]
    assert json.loads((tmp_path / "records" / "m-1.json").read_text()) == records[0]
    assert oct((tmp_path / "records" / "m-1.json").stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["m-1.json"]  # no temporary file left
    assert json.loads((tmp_path / "res.json").read_text()) == {}
    # Again: nothing left to release; the record rewritten whole.
    again = record.finish(params(tmp_path, records, got), check_mode=False)
    assert again["released"] == 0


def test_check_mode_writes_nothing(tmp_path):
    got = placement.reserve_many(str(tmp_path / "res.json"), [{"owner": "m-1/w", "gpus": 1}], CANDIDATES)
    records = [{"id": "m-1", "source": "node1", "migrations": [{"workload": "w"}]}]
    out = record.finish(params(tmp_path, records, got), check_mode=True)
    assert out["written"] == [str(tmp_path / "records" / "m-1.json")] and not (tmp_path / "records").exists()
    assert "m-1/w" in json.loads((tmp_path / "res.json").read_text())


def test_a_hostile_id_writes_nothing_at_all(tmp_path):
    records = [{"id": "m-1", "migrations": [{"workload": "w"}]}, {"id": "../../etc/x", "migrations": [{"workload": "v"}]}]
    with pytest.raises(plan_mod.MigrationError, match=r"\.\./\.\./etc/x"):
        record.finish(params(tmp_path, records), check_mode=False)
    assert not (tmp_path / "records").exists()
