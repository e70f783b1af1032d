"""The metadata simulator speaks each dialect strictly, over real HTTP."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

TOKEN_PATH = "/latest/api/token"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"


def token(url, ttl="21600"):
    return httpx.put(url + TOKEN_PATH, headers={TTL: ttl}).text


@pytest.mark.parametrize("headers, status", [
    ({TTL: "21600"}, 200), ({TTL: "1"}, 200), ({TTL: "0"}, 400), ({TTL: "21601"}, 400),
    ({TTL: "ten"}, 400), ({}, 400), ({TTL: "60", "X-Forwarded-For": "10.0.0.1"}, 403),
])
def test_aws_token_ttl_rules(metadata_sim, headers, status):
    sim = metadata_sim("aws")
    assert httpx.put(sim.url + TOKEN_PATH, headers=headers).status_code == status


def test_aws_token_reads_and_v2_only(metadata_sim):
    sim = metadata_sim("aws", v2_only=True)
    path = sim.url + "/latest/meta-data/instance-id"
    assert httpx.get(path).status_code == 401
    assert httpx.get(path, headers={"X-aws-ec2-metadata-token": "forged"}).status_code == 401
    good = httpx.get(path, headers={"X-aws-ec2-metadata-token": token(sim.url)})
    assert good.status_code == 200 and good.text.startswith("i-")
    assert good.headers["content-type"] == "text/plain"


def test_aws_token_expires(metadata_sim):
    sim = metadata_sim("aws")
    tok = token(sim.url, "1")
    time.sleep(1.2)
    assert httpx.get(sim.url + "/latest/meta-data/instance-id",
                     headers={"X-aws-ec2-metadata-token": tok}).status_code == 401


def test_aws_instance_action_404_then_fixed_time(metadata_sim):
    sim = metadata_sim("aws")
    action = sim.url + "/latest/meta-data/spot/instance-action"
    quiet = httpx.get(action)
    assert quiet.status_code == 404 and "404 - Not Found" in quiet.text
    assert httpx.get(sim.url + "/latest/meta-data/events/maintenance/scheduled").text == "[]"
    httpx.post(sim.url + "/_sim/notice", json={"kind": "spot_interruption", "action": "stop"})
    first = httpx.get(action).json()
    time.sleep(1.1)
    assert httpx.get(action).json() == first
    assert first["action"] == "stop"
    assert httpx.get(sim.url + "/latest/meta-data/spot/termination-time").status_code == 404  # stop, not terminate
    assert httpx.get(sim.url + "/latest/meta-data/instance-life-cycle").text == "spot"


def test_aws_rebalance_and_maintenance(metadata_sim):
    sim = metadata_sim("aws")
    assert httpx.get(sim.url + "/latest/meta-data/events/recommendations/rebalance").status_code == 404
    httpx.post(sim.url + "/_sim/notice", json={"kind": "rebalance"})
    httpx.post(sim.url + "/_sim/notice", json={"kind": "maintenance", "code": "instance-retirement"})
    assert "noticeTime" in httpx.get(sim.url + "/latest/meta-data/events/recommendations/rebalance").json()
    events = httpx.get(sim.url + "/latest/meta-data/events/maintenance/scheduled").json()
    assert events[0]["Code"] == "instance-retirement" and events[0]["State"] == "active"
    assert events[0]["NotBefore"].endswith(" GMT")


def test_gcp_flavor_and_forwarded_for(metadata_sim):
    sim = metadata_sim("gcp")
    url = sim.url + "/computeMetadata/v1/instance/preempted"
    assert httpx.get(url).status_code == 403
    assert httpx.get(url, headers={"Metadata-Flavor": "Google", "X-Forwarded-For": "1.2.3.4"}).status_code == 403
    ok = httpx.get(url, headers={"Metadata-Flavor": "Google"})
    assert ok.status_code == 200 and ok.text == "FALSE"
    assert ok.headers["metadata-flavor"] == "Google" and ok.headers["etag"]


def test_gcp_hanging_get_returns_on_change(metadata_sim):
    sim = metadata_sim("gcp")
    h = {"Metadata-Flavor": "Google"}
    url = sim.url + "/computeMetadata/v1/instance/preempted"
    etag = httpx.get(url, headers=h).headers["etag"]
    threading.Timer(0.5, lambda: httpx.post(sim.url + "/_sim/notice", json={"kind": "preempt"})).start()
    start = time.monotonic()
    resp = httpx.get(url, params={"wait_for_change": "true", "last_etag": etag, "timeout_sec": "20"}, headers=h,
                     timeout=30)
    assert resp.text == "TRUE" and resp.headers["etag"] != etag
    assert time.monotonic() - start < 10


def test_gcp_hanging_get_times_out_with_same_value(metadata_sim):
    sim = metadata_sim("gcp")
    h = {"Metadata-Flavor": "Google"}
    url = sim.url + "/computeMetadata/v1/instance/maintenance-event"
    etag = httpx.get(url, headers=h).headers["etag"]
    resp = httpx.get(url, params={"wait_for_change": "true", "last_etag": etag, "timeout_sec": "1"}, headers=h)
    assert resp.text == "NONE" and resp.headers["etag"] == etag


def test_gcp_stale_etag_returns_at_once(metadata_sim):
    sim = metadata_sim("gcp")
    h = {"Metadata-Flavor": "Google"}
    url = sim.url + "/computeMetadata/v1/instance/preempted"
    resp = httpx.get(url, params={"wait_for_change": "true", "last_etag": "stale", "timeout_sec": "30"}, headers=h,
                     timeout=5)
    assert resp.text == "FALSE"


def test_gcp_has_no_rebalance(metadata_sim):
    sim = metadata_sim("gcp")
    resp = httpx.post(sim.url + "/_sim/notice", json={"kind": "rebalance"})
    assert resp.status_code == 400 and "no rebalance" in resp.json()["error"]


AZ = {"Metadata": "true"}
EVENTS = "/metadata/scheduledevents"


def test_azure_header_and_api_version_required(metadata_sim):
    sim = metadata_sim("azure")
    no_header = httpx.get(sim.url + EVENTS, params={"api-version": "2020-07-01"})
    assert no_header.status_code == 400 and "Required metadata header" in no_header.json()["error"]
    no_version = httpx.get(sim.url + EVENTS, headers=AZ)
    assert no_version.status_code == 400 and "api-version was not specified" in no_version.json()["error"]
    assert "newest-versions" in no_version.json()
    bad_version = httpx.get(sim.url + EVENTS, headers=AZ, params={"api-version": "1999-01-01"})
    assert bad_version.status_code == 400


def test_azure_events_lifecycle(metadata_sim):
    sim = metadata_sim("azure", name="vm-a")
    q = {"api-version": "2020-07-01"}
    quiet = httpx.get(sim.url + EVENTS, headers=AZ, params=q).json()
    assert quiet["Events"] == []
    httpx.post(sim.url + "/_sim/notice", json={"kind": "maintenance", "resources": ["vm-b"], "in_seconds": 600})
    other = httpx.get(sim.url + EVENTS, headers=AZ, params=q).json()
    assert other["DocumentIncarnation"] > quiet["DocumentIncarnation"]
    assert other["Events"][0]["Resources"] == ["vm-b"]
    notice = httpx.post(sim.url + "/_sim/notice", json={"kind": "preempt"}).json()
    doc = httpx.get(sim.url + EVENTS, headers=AZ, params=q).json()
    event = next(e for e in doc["Events"] if e["EventId"] == notice["event_id"])
    assert event["EventStatus"] == "Scheduled" and event["NotBefore"].endswith("GMT")
    assert event["EventType"] == "Preempt" and event["Resources"] == ["vm-a"]
    ack = httpx.post(sim.url + EVENTS, headers=AZ, params=q, json={"StartRequests": [{"EventId": notice["event_id"]}]})
    assert ack.status_code == 200
    after = httpx.get(sim.url + EVENTS, headers=AZ, params=q).json()
    started = next(e for e in after["Events"] if e["EventId"] == notice["event_id"])
    assert started["EventStatus"] == "Started" and started["NotBefore"] == ""
    assert after["DocumentIncarnation"] > doc["DocumentIncarnation"]
    bad = httpx.post(sim.url + EVENTS, headers=AZ, params=q, json={"StartRequests": [{"EventId": "nope"}]})
    assert bad.status_code == 400


def test_azure_scheduled_becomes_started_at_not_before(metadata_sim):
    sim = metadata_sim("azure")
    httpx.post(sim.url + "/_sim/notice", json={"kind": "terminate", "in_seconds": 0.5})
    time.sleep(0.8)
    doc = httpx.get(sim.url + EVENTS, headers=AZ, params={"api-version": "2020-07-01"}).json()
    assert doc["Events"][0]["EventStatus"] == "Started" and doc["Events"][0]["NotBefore"] == ""


def test_azure_compute(metadata_sim):
    sim = metadata_sim("azure", name="vm-a")
    compute = httpx.get(sim.url + "/metadata/instance/compute", headers=AZ, params={"api-version": "2021-02-01"})
    assert compute.json()["name"] == "vm-a" and compute.json()["priority"] == "Spot"
    name = httpx.get(sim.url + "/metadata/instance/compute/name", headers=AZ,
                     params={"api-version": "2021-02-01", "format": "text"})
    assert name.text == "vm-a"


@pytest.mark.parametrize("mode, check", [
    ("error", lambda r: r.status_code == 500),
    ("blip", lambda r: r.status_code == 503),
    ("garbage", lambda r: r.status_code == 200 and b"not-json" in r.content),
    ("oversize", lambda r: len(r.content) > 1 << 20),
    ("redirect", lambda r: r.status_code == 302 and r.headers["location"]),
])
def test_faults_replace_answers_then_go_away(metadata_sim, mode, check):
    sim = metadata_sim("aws")
    httpx.post(sim.url + "/_sim/fault", json={"mode": mode, "count": 1})
    url = sim.url + "/latest/meta-data/instance-id"
    assert check(httpx.get(url))
    assert httpx.get(url).status_code == 200


def test_fault_drop_closes_without_answer(metadata_sim):
    sim = metadata_sim("aws")
    httpx.post(sim.url + "/_sim/fault", json={"mode": "drop", "count": 1})
    with pytest.raises(httpx.HTTPError):
        httpx.get(sim.url + "/latest/meta-data/instance-id")


def test_fault_delay_and_path_filter(metadata_sim):
    sim = metadata_sim("aws")
    httpx.post(sim.url + "/_sim/fault", json={"mode": "delay", "seconds": 0.6, "path": "/latest/meta-data/spot"})
    start = time.monotonic()
    httpx.get(sim.url + "/latest/meta-data/instance-id")
    fast = time.monotonic() - start
    start = time.monotonic()
    httpx.get(sim.url + "/latest/meta-data/spot/instance-action")
    assert time.monotonic() - start >= 0.6 > fast
    httpx.delete(sim.url + "/_sim/fault")
    assert httpx.get(sim.url + "/_sim/state").json()["faults"] == []


@pytest.mark.parametrize("body, message", [
    ({"kind": "explode"}, "notice kind must be one of"),
    ({"kind": "spot_interruption", "action": "melt"}, "'melt'"),
    ({"kind": "preempt", "in_seconds": "soon"}, "in_seconds must be a number"),
])
def test_control_api_names_bad_values(metadata_sim, body, message):
    sim = metadata_sim("aws")
    resp = httpx.post(sim.url + "/_sim/notice", json=body)
    assert resp.status_code == 400 and message in resp.json()["error"]
