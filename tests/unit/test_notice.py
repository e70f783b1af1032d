"""Table-driven tests of the three clouds' parsers on recorded payloads (tests/unit/data/notice_cases.yml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.spot.migration.plugins.module_utils import _notice as notice_mod
from ansible_collections.spot.migration.plugins.module_utils._notice import NoticeError, parse_aws, parse_azure, parse_gcp

CASES = yaml.safe_load((Path(__file__).parent / "data" / "notice_cases.yml").read_text())
NOW = "2026-11-30T08:00:00Z"


def _parse(cloud: str, case: dict, now: float) -> dict:
    if cloud == "aws":
        return parse_aws("i-0123456789abcdef0", case.get("instance_action"), case.get("termination_time"),
                         case.get("rebalance"), case.get("maintenance"), now)
    if cloud == "gcp":
        return parse_gcp("4520031799277581759", case["preempted"], case.get("maintenance_event"), now)
    return parse_azure("myvm", case["document"], now, instance_id="vm-uuid")


def _cases():
    for cloud, cases in CASES.items():
        for case in cases:
            yield pytest.param(cloud, case, id=f"{cloud}: {case['id']}")


@pytest.mark.parametrize(("cloud", "case"), list(_cases()))
def test_recorded_payload(cloud, case):
    now = notice_mod.parse_iso8601(case.get("now", NOW))
    if "error" in case:
        with pytest.raises(NoticeError, match=None) as info:
            _parse(cloud, case, now)
        assert case["error"] in str(info.value)
        return
    notice = _parse(cloud, case, now)
    for key, want in case["expect"].items():
        if key == "notices":
            assert len(notice["notices"]) == want
        else:
            assert notice[key] == want, f"{key}: {notice[key]!r} != {want!r}"
    assert notice["provider"] == cloud
    assert notice["checked_at"] == notice_mod.iso_utc(now)
    assert set(notice) >= {"evicting", "provider", "kind", "action", "deadline", "seconds_left", "notice_id",
                           "instance_id", "raw", "checked_at"}
    if notice["kind"] != "none":
        assert notice["notice_id"].startswith(cloud + "-")


@pytest.mark.parametrize(("cloud", "case"), [
    ("aws", {"instance_action": '{"action": "terminate", "time": "2026-11-30T08:22:00Z"}', "maintenance": "[]"}),
    ("aws", {"rebalance": '{"noticeTime": "2026-11-30T08:00:00Z"}', "maintenance": "[]"}),
    ("gcp", {"preempted": "TRUE", "maintenance_event": "NONE"}),
    ("gcp", {"preempted": "FALSE", "maintenance_event": "MIGRATE_ON_HOST_MAINTENANCE"}),
    ("azure", {"document": '{"DocumentIncarnation": 2, "Events": [{"EventId": "E1", "EventStatus": "Scheduled", '
                           '"EventType": "Preempt", "Resources": ["myvm"], "NotBefore": "Mon, 30 Nov 2026 08:00:30 GMT"}]}'}),
])
def test_same_notice_polled_again_keeps_its_id(cloud, case):
    first = _parse(cloud, case, notice_mod.parse_iso8601("2026-11-30T08:00:00Z"))
    second = _parse(cloud, case, notice_mod.parse_iso8601("2026-11-30T08:00:07Z"))
    assert first["notice_id"] and first["notice_id"] == second["notice_id"]
    assert first["checked_at"] != second["checked_at"]


def test_azure_started_keeps_the_scheduled_event_id():
    scheduled = ('{"DocumentIncarnation": 2, "Events": [{"EventId": "E1", "EventStatus": "Scheduled", '
                 '"EventType": "Preempt", "Resources": ["myvm"], "NotBefore": "Mon, 30 Nov 2026 08:00:30 GMT"}]}')
    started = ('{"DocumentIncarnation": 3, "Events": [{"EventId": "E1", "EventStatus": "Started", '
               '"EventType": "Preempt", "Resources": ["myvm"], "NotBefore": ""}]}')
    now = notice_mod.parse_iso8601("2026-11-30T08:00:10Z")
    assert parse_azure("myvm", scheduled, now)["notice_id"] == parse_azure("myvm", started, now)["notice_id"]


def test_different_notices_get_different_ids():
    now = notice_mod.parse_iso8601(NOW)
    a = parse_aws("i-1", '{"action": "terminate", "time": "2026-11-30T08:02:00Z"}', None, None, "[]", now)
    b = parse_aws("i-1", '{"action": "terminate", "time": "2026-11-30T09:02:00Z"}', None, None, "[]", now)
    c = parse_aws("i-2", '{"action": "terminate", "time": "2026-11-30T08:02:00Z"}', None, None, "[]", now)
    assert len({a["notice_id"], b["notice_id"], c["notice_id"]}) == 3


@pytest.mark.parametrize("kinds, evicting", [
    (("spot_interruption", "preempt", "terminate"), False),
    (("spot_interruption", "maintenance"), True),
])
def test_evicting_kinds_decide_what_evicts(kinds, evicting):
    notice = parse_gcp("1", "FALSE", "TERMINATE_ON_HOST_MAINTENANCE", 0.0, evicting_kinds=kinds)
    assert notice["kind"] == "maintenance"
    assert notice["evicting"] is evicting


@pytest.mark.parametrize("text, expected", [
    ("2026-11-30T08:22:00Z", "2026-11-30T08:22:00Z"),
    ("2026-11-30T08:22:00.250Z", "2026-11-30T08:22:00Z"),
    ("2026-11-30T10:22:00+02:00", "2026-11-30T08:22:00Z"),
    ("2026-11-30T03:22:00-0500", "2026-11-30T08:22:00Z"),
    ("2026-11-30 08:22:00", "2026-11-30T08:22:00Z"),
])
def test_iso8601(text, expected):
    assert notice_mod.iso_utc(notice_mod.parse_iso8601(text)) == expected


@pytest.mark.parametrize("text", ["", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "08:22", None, 12])
def test_iso8601_rejects(text):
    with pytest.raises(NoticeError):
        notice_mod.parse_iso8601(text)


def test_gcp_preemption_ids_differ_by_boot_and_repeat_within_one():
    first = parse_gcp("1", "TRUE", "NONE", 0.0, boot_id="boot-a")
    assert parse_gcp("1", "TRUE", "NONE", 50.0, boot_id="boot-a")["notice_id"] == first["notice_id"]
    # Stopped and started again (same instance id, new boot), then preempted again: a new notice.
    assert parse_gcp("1", "TRUE", "NONE", 900.0, boot_id="boot-b")["notice_id"] != first["notice_id"]
