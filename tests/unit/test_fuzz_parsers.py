"""Hypothesis fuzzing of the three parsers: garbage never crashes them and never evicts.

Each parser either returns a notice or raises NoticeError. When it says ``evicting``,
the payload must really carry a documented eviction (checked here independently)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.spot.migration.plugins.module_utils._notice import NoticeError, parse_aws, parse_azure, parse_gcp

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_800_000_000.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
# Documented keys with arbitrary values: closer to the parsers' paths than pure noise.
aws_action = st.fixed_dictionaries({}, optional={
    "action": st.sampled_from(["terminate", "stop", "hibernate"]) | st.text(max_size=10) | json_values,
    "time": st.sampled_from(["2026-11-30T08:22:00Z", "2026-02-30T00:00:00Z", "", "soon"]) | st.text(max_size=25),
})
azure_event = st.fixed_dictionaries({}, optional={
    "EventId": st.text(max_size=8) | json_values,
    "EventType": st.sampled_from(["Preempt", "Terminate", "Reboot", "Freeze", "Redeploy"]) | st.text(max_size=8),
    "EventStatus": st.sampled_from(["Scheduled", "Started"]) | st.text(max_size=8),
    "Resources": st.lists(st.sampled_from(["myvm", "other"]) | st.text(max_size=5), max_size=3) | json_values,
    "NotBefore": st.sampled_from(["Mon, 19 Sep 2016 18:29:47 GMT", "", "tomorrow"]) | st.text(max_size=30),
})
bodies = st.text(max_size=200) | st.binary(max_size=200) | json_values.map(json.dumps)


def _valid_iso(text):
    return isinstance(text, str) and len(text) >= 20


@FUZZ
@given(action=bodies | aws_action.map(json.dumps) | st.none(), termination=bodies | st.none(),
       rebalance=bodies | st.none(), maintenance=bodies | st.none())
def test_aws_parser(action, termination, rebalance, maintenance):
    try:
        notice = parse_aws("i-1", action, termination, rebalance, maintenance, NOW)
    except NoticeError:
        return
    if notice["evicting"]:
        if action is not None:
            doc = json.loads(action)
            assert doc["action"] in ("terminate", "stop", "hibernate") and _valid_iso(doc["time"])
        else:
            assert termination is not None
        assert notice["kind"] == "spot_interruption" and notice["deadline"]


@FUZZ
@given(preempted=bodies | st.sampled_from(["TRUE", "FALSE", "TRUE\n", "true", ""]),
       maintenance=bodies | st.none() | st.sampled_from(["NONE", "MIGRATE_ON_HOST_MAINTENANCE"]))
def test_gcp_parser(preempted, maintenance):
    try:
        notice = parse_gcp("123", preempted, maintenance, NOW)
    except NoticeError:
        return
    if notice["evicting"]:
        text = preempted.decode() if isinstance(preempted, bytes) else preempted
        assert text.strip() == "TRUE"


@FUZZ
@given(doc=bodies | st.fixed_dictionaries({"DocumentIncarnation": st.integers() | json_values,
                                           "Events": st.lists(azure_event, max_size=3) | json_values}).map(json.dumps))
def test_azure_parser(doc):
    try:
        notice = parse_azure("myvm", doc, NOW)
    except NoticeError:
        return
    if notice["evicting"]:
        events = json.loads(doc)["Events"]
        assert any(isinstance(e, dict) and e.get("EventType") in ("Preempt", "Terminate")
                   and isinstance(e.get("Resources"), list) and "myvm" in e["Resources"]
                   and e.get("EventStatus") in ("Scheduled", "Started") for e in events)
