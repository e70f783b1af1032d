"""The probe logic through its one seam (``fetch``), with recorded answers: retries, redirects,
tokens, size caps, auto-detection. No sockets here; the simulator tests cover the wire."""

from __future__ import annotations

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _metadata as md
from ansible_collections.spot.migration.plugins.module_utils._notice import NoticeError


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def monotonic(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


class Script:
    """A fetch that answers from a table {(method, path-prefix): [answers...]}; the last answer repeats."""

    def __init__(self, table, clock=None):
        self.table = {k: list(v) for k, v in table.items()}
        self.calls = []
        self.clock = clock

    def __call__(self, method, url, headers, timeout, data=None):
        path = url.split("://", 1)[1].split("/", 1)[1]
        self.calls.append((method, "/" + path, dict(headers)))
        if self.clock:
            self.clock.t += 0.01
        for (m, prefix), answers in self.table.items():
            if m == method and ("/" + path).startswith(prefix):
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if isinstance(answer, Exception):
                    raise answer
                status, body, *rest = answer
                return md.Response(status, rest[0] if rest else {}, body)
        return md.Response(404, {}, b"not found")


def aws_table(overrides=None):
    table = {
        ("PUT", "/latest/api/token"): [(200, b"AQAEAtoken-secret-value==")],
        ("GET", "/latest/meta-data/instance-id"): [(200, b"i-0123456789abcdef0")],
        ("GET", "/latest/meta-data/spot/instance-action"): [(404, b"")],
        ("GET", "/latest/meta-data/spot/termination-time"): [(404, b"")],
        ("GET", "/latest/meta-data/events/recommendations/rebalance"): [(404, b"")],
        ("GET", "/latest/meta-data/events/maintenance/scheduled"): [(200, b"[]")],
    }
    table.update(overrides or {})
    return table


def probe(provider, table, clock=None, **kwargs):
    clock = clock or FakeClock()
    fetch = Script(table, clock)
    return md.make_probe(fetch, provider, "http://127.0.0.1:1", monotonic=clock.monotonic, sleep=clock.sleep,
                         **kwargs)


def test_aws_v2_token_is_sent_and_never_returned():
    p = probe("aws", aws_table())
    fetch = p.fetch
    notice = p.probe()
    assert notice["kind"] == "none"
    gets = [c for c in fetch.calls if c[0] == "GET"]
    assert all(c[2]["X-aws-ec2-metadata-token"] == "AQAEAtoken-secret-value==" for c in gets)
    assert "token-secret" not in repr(notice)
    p.probe()
    assert [c[0] for c in fetch.calls].count("PUT") == 1, "token is reused, not fetched on every probe"


def test_aws_v1_sends_no_token():
    p = probe("aws", aws_table(), imds_version="v1")
    fetch = p.fetch
    p.probe()
    assert not any(c[0] == "PUT" for c in fetch.calls)
    assert not any("X-aws-ec2-metadata-token" in c[2] for c in fetch.calls)


@pytest.mark.parametrize("status", [403, 404, 405])
def test_aws_auto_falls_back_to_v1_when_tokens_are_refused(status):
    p = probe("aws", aws_table({("PUT", "/latest/api/token"): [(status, b"")]}))
    p.probe()
    assert p.version_used == "v1"


def test_aws_v2_required_fails_when_tokens_are_refused():
    p = probe("aws", aws_table({("PUT", "/latest/api/token"): [(403, b"")]}), imds_version="v2")
    with pytest.raises(NoticeError, match="requires one"):
        p.probe()


def test_aws_expired_token_is_renewed_once():
    table = aws_table({
        ("PUT", "/latest/api/token"): [(200, b"first"), (200, b"second")],
        ("GET", "/latest/meta-data/instance-id"): [(401, b""), (200, b"i-1")],
    })
    p = probe("aws", table)
    fetch = p.fetch
    assert p.probe()["instance_id"] == "i-1"
    assert [c[0] for c in fetch.calls].count("PUT") == 2


def test_5xx_is_retried_within_the_timeout():
    table = aws_table({("GET", "/latest/meta-data/spot/instance-action"): [
        (503, b""), (500, b""), (200, b'{"action": "terminate", "time": "2099-01-01T00:00:00Z"}')]})
    p = probe("aws", table)
    notice = p.probe()
    assert notice["evicting"] is True
    assert p.retries == 2


def test_5xx_that_never_ends_fails_naming_url_and_answer():
    table = aws_table({("GET", "/latest/meta-data/spot/instance-action"): [(500, b"Internal Server Error")]})
    p = probe("aws", table, timeout=2.0)
    with pytest.raises(NoticeError) as info:
        p.probe()
    assert "http://127.0.0.1:1/latest/meta-data/spot/instance-action" in str(info.value)
    assert "HTTP 500" in str(info.value)


def test_unreachable_is_an_error_not_quiet():
    table = {("PUT", "/latest/api/token"): [md.TransportError("Connection refused")]}
    p = probe("aws", table, timeout=1.0)
    with pytest.raises(NoticeError, match="unreachable: Connection refused"):
        p.probe()


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirects_are_refused(status):
    table = aws_table({("GET", "/latest/meta-data/spot/instance-action"): [
        (status, b"", {"Location": "http://evil.example/"})]})
    p = probe("aws", table)
    with pytest.raises(NoticeError, match="redirect to 'http://evil.example/' refused"):
        p.probe()


def test_oversized_body_is_refused():
    table = aws_table({("GET", "/latest/meta-data/spot/instance-action"): [(200, b"{" + b" " * md.MAX_BODY_BYTES)]})
    p = probe("aws", table)
    with pytest.raises(NoticeError, match="larger than 65536 bytes"):
        p.probe()


def test_gcp_requires_the_flavor_header_in_the_answer():
    table = {("GET", "/computeMetadata/v1/instance/id"): [(200, b"123")]}
    p = probe("gcp", table)
    with pytest.raises(NoticeError, match="not a GCE metadata server"):
        p.probe()


def gcp_table(preempted=b"FALSE"):
    g = {"Metadata-Flavor": "Google", "ETag": "abc"}
    return {
        ("GET", "/computeMetadata/v1/instance/id"): [(200, b"123", g)],
        ("GET", "/computeMetadata/v1/instance/preempted"): [(200, preempted, g)],
        ("GET", "/computeMetadata/v1/instance/maintenance-event"): [(200, b"NONE", g)],
    }


def test_gcp_sends_flavor_header_and_reads_preemption():
    p = probe("gcp", gcp_table(b"TRUE"))
    fetch = p.fetch
    assert p.probe()["evicting"] is True
    assert all(c[2]["Metadata-Flavor"] == "Google" for c in fetch.calls)


def test_gcp_403_is_an_error():
    p = probe("gcp", {("GET", "/computeMetadata/v1/instance/id"): [(403, b"Missing Metadata-Flavor:Google header.")]})
    with pytest.raises(NoticeError, match="HTTP 403 'Missing Metadata-Flavor:Google header.'"):
        p.probe()


def test_gcp_wait_uses_hanging_get_with_last_etag():
    table = gcp_table()
    table[("GET", "/computeMetadata/v1/instance/preempted")] = [
        (200, b"FALSE", {"Metadata-Flavor": "Google", "ETag": "e1"}),
        (200, b"TRUE", {"Metadata-Flavor": "Google", "ETag": "e2"}),
    ]
    p = probe("gcp", table)
    fetch = p.fetch
    notice = p.wait(30)
    assert notice["evicting"] is True
    hanging = [c for c in fetch.calls if "wait_for_change=true" in c[1]]
    assert hanging and "last_etag=e1" in hanging[0][1] and "timeout_sec=" in hanging[0][1]


def test_azure_needs_vm_name_and_sends_metadata_header():
    table = {
        ("GET", "/metadata/instance/compute"): [(200, b'{"name": "myvm", "vmId": "uuid-1"}')],
        ("GET", "/metadata/scheduledevents"): [(200, b'{"DocumentIncarnation": 1, "Events": []}')],
    }
    p = probe("azure", table)
    fetch = p.fetch
    notice = p.probe()
    assert notice["instance_id"] == "uuid-1"
    assert all(c[2]["Metadata"] == "true" for c in fetch.calls)
    assert all("api-version=" in c[1] for c in fetch.calls)


def test_azure_compute_without_name_is_an_error():
    p = probe("azure", {("GET", "/metadata/instance/compute"): [(200, b'{"vmId": "x"}')]})
    with pytest.raises(NoticeError, match='no compute "name"'):
        p.probe()


def test_wait_polls_until_a_notice_appears():
    table = aws_table({("GET", "/latest/meta-data/spot/instance-action"): [
        (404, b""), (404, b""), (404, b""), (200, b'{"action": "stop", "time": "2099-01-01T00:00:00Z"}')]})
    clock = FakeClock()
    p = probe("aws", table, clock=clock)
    notice = p.wait(60)
    assert notice["evicting"] is True
    assert 2.9 < notice["waited"] < 4.0


def test_wait_gives_up_at_its_deadline_and_reports_quiet():
    clock = FakeClock()
    p = probe("aws", aws_table(), clock=clock)
    notice = p.wait(5)
    assert notice["evicting"] is False and 5.0 <= notice["waited"] < 6.5


@pytest.mark.parametrize("files, expected", [
    ({"sys_vendor": "Amazon EC2", "bios_vendor": "Amazon EC2"}, "aws"),
    ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, "gcp"),
    ({"sys_vendor": "Microsoft Corporation", "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"}, "azure"),
    ({"sys_vendor": "QEMU"}, None),
    ({}, None),
])
def test_dmi_detection(tmp_path, files, expected):
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
    assert md.read_dmi(str(tmp_path)) == expected


def test_auto_detection_prefers_dmi_without_url(tmp_path):
    (tmp_path / "sys_vendor").write_text("Google\n")
    fetch = Script({})
    assert md.detect_provider(fetch, None, dmi_dir=str(tmp_path)) == "gcp"
    assert fetch.calls == []


@pytest.mark.parametrize("table, expected", [
    ({("GET", "/computeMetadata/v1/"): [(200, b"instance/\n", {"Metadata-Flavor": "Google"})]}, "gcp"),
    ({("GET", "/metadata/instance/compute"): [(200, b'{"name": "x"}')]}, "azure"),
    ({("PUT", "/latest/api/token"): [(200, b"tok")]}, "aws"),
])
def test_auto_detection_by_probe(table, expected, tmp_path):
    assert md.detect_provider(Script(table), "http://127.0.0.1:1", dmi_dir=str(tmp_path)) == expected


def test_auto_detection_fails_clearly(tmp_path):
    with pytest.raises(NoticeError, match="Set provider explicitly"):
        md.detect_provider(Script({}), "http://127.0.0.1:1", dmi_dir=str(tmp_path))


def test_check_notice_fail_on_error_false_reports_error_not_quiet():
    fetch = Script({("PUT", "/latest/api/token"): [md.TransportError("Connection refused")]})
    result = md.check_notice(fetch, {"provider": "aws", "metadata_url": "http://127.0.0.1:1", "timeout": 0.3,
                                     "fail_on_error": False})
    assert result["evicting"] is False and result["kind"] == "none"
    assert "Connection refused" in result["error"]
    with pytest.raises(NoticeError):
        md.check_notice(fetch, {"provider": "aws", "metadata_url": "http://127.0.0.1:1", "timeout": 0.3})
