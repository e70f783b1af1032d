"""The real eviction_info module through ansible-playbook against the real simulator:
every cloud, every notice type, every fault mode, check mode, wait, auto-detection,
target Pythons, and the IMDSv2 token never showing up in -vvv output."""

from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time

import httpx
import pytest

CLEAR = [("POST", "/_sim/clear", {}), ("DELETE", "/_sim/fault", None)]
NOTICE_PATH = {"aws": "/latest/meta-data/spot/instance-action",
               "gcp": "/computeMetadata/v1/instance/preempted",
               "azure": "/metadata/scheduledevents"}


def notice(**body):
    return ("POST", "/_sim/notice", body)


def fault(**body):
    return ("POST", "/_sim/fault", body)


# (case name, control calls, extra module args, expectations). Expectations are either field values
# or {"failed": "substring of msg"}.
COMMON = [
    ("quiet", [], {}, {"evicting": False, "kind": "none", "error": None, "notice_id": None}),
    ("500 forever fails naming the answer", [fault(mode="error", status=500, path="{notice_path}")], {"timeout": 1.5},
     {"failed": "HTTP 500"}),
    ("two 503 blips are retried", [fault(mode="blip", count=2, path="{notice_path}")], {}, {"kind": "none"}),
    ("garbage body fails", [fault(mode="garbage", path="{notice_path}")], {}, {"failed": "{garbage_msg}"}),
    ("oversized body fails", [fault(mode="oversize", path="{notice_path}")], {}, {"failed": "larger than 65536 bytes"}),
    ("redirect is refused", [fault(mode="redirect", path="{notice_path}")], {},
     {"failed": "redirect to 'http://127.0.0.1:9/elsewhere' refused"}),
    ("dropped connections forever fail", [fault(mode="drop", path="{notice_path}")], {"timeout": 1.5},
     {"failed": "unreachable"}),
    ("one dropped connection is retried", [fault(mode="drop", count=1, path="{notice_path}")], {}, {"kind": "none"}),
    ("slow answer inside the timeout", [fault(mode="delay", seconds=0.5, count=1)], {"timeout": 3}, {"kind": "none"}),
    ("hung service times out", [fault(mode="hang", path="{notice_path}")], {"timeout": 1.5},
     {"failed": "{notice_path}"}),
    ("fail_on_error false reports blind, never quiet", [fault(mode="error", status=500, path="{notice_path}")],
     {"timeout": 1, "fail_on_error": False}, {"evicting": False, "error_set": True}),
    ("auto detects the cloud", [], {"provider": "auto"}, {"provider": "{cloud}", "kind": "none"}),
]
BY_CLOUD = {
    "aws": [
        ("spot terminate", [notice(kind="spot_interruption")], {},
         {"evicting": True, "kind": "spot_interruption", "action": "terminate", "left_between": [100, 121]}),
        ("spot stop", [notice(kind="spot_interruption", action="stop")], {}, {"evicting": True, "action": "stop"}),
        ("spot hibernate", [notice(kind="spot_interruption", action="hibernate")], {},
         {"evicting": True, "action": "hibernate"}),
        ("rebalance is not eviction", [notice(kind="rebalance")], {}, {"evicting": False, "kind": "rebalance"}),
        ("maintenance is not eviction", [notice(kind="maintenance")], {}, {"evicting": False, "kind": "maintenance"}),
        ("maintenance counts when asked", [notice(kind="maintenance")],
         {"evicting_kinds": ["spot_interruption", "maintenance"]}, {"evicting": True, "kind": "maintenance"}),
        ("v2-only IMDS with imds_version v1 fails 401", [("POST", "/_sim/config", {"v2_only": True})],
         {"imds_version": "v1"}, {"failed": "HTTP 401"}),
        ("v2-only IMDS with imds_version v2", [("POST", "/_sim/config", {"v2_only": True})],
         {"imds_version": "v2"}, {"kind": "none"}),
        ("token endpoint down fails", [("POST", "/_sim/config", {"v2_only": False}),
                                       fault(mode="error", status=500, path="/latest/api/token")],
         {"timeout": 1}, {"failed": "/latest/api/token"}),
    ],
    "gcp": [
        ("preempted", [notice(kind="preempt")], {},
         {"evicting": True, "kind": "preempt", "action": "stop", "deadline": None}),
        ("live migration is maintenance", [notice(kind="maintenance")], {},
         {"evicting": False, "kind": "maintenance", "action": "migrate"}),
        ("terminate on host maintenance", [notice(kind="maintenance", action="TERMINATE_ON_HOST_MAINTENANCE")], {},
         {"evicting": False, "kind": "maintenance", "action": "terminate"}),
        ("missing flavor header answer", [fault(mode="error", status=403, path="/computeMetadata/v1/instance/id")],
         {}, {"failed": "HTTP 403"}),
    ],
    "azure": [
        ("preempt for this VM", [notice(kind="preempt")], {},
         {"evicting": True, "kind": "preempt", "left_between": [20, 31]}),
        ("terminate for this VM", [notice(kind="terminate")], {}, {"evicting": True, "kind": "terminate"}),
        ("preempt for another VM is ignored", [notice(kind="preempt", resources=["other-vm"])], {},
         {"evicting": False, "kind": "none"}),
        ("started event, empty NotBefore", [notice(kind="preempt", status="Started")], {},
         {"evicting": True, "kind": "preempt", "left_between": [0, 0]}),
        ("freeze is maintenance", [notice(kind="maintenance", event_type="Freeze")], {},
         {"evicting": False, "kind": "maintenance", "action": "freeze"}),
        ("redeploy is maintenance", [notice(kind="maintenance", event_type="Redeploy")], {},
         {"evicting": False, "kind": "maintenance", "action": "redeploy"}),
    ],
}
GARBAGE_MSG = {"aws": "instance-action is not JSON", "gcp": "instance/preempted is not", "azure": "scheduledevents is not JSON"}


def _fill(value, cloud):
    if isinstance(value, str):
        return value.format(cloud=cloud, notice_path=NOTICE_PATH[cloud], garbage_msg=GARBAGE_MSG[cloud])
    if isinstance(value, dict):
        return {k: _fill(v, cloud) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, cloud) for v in value)
    return value


def _tasks(cloud: str, url: str, check_mode: bool) -> list[dict]:
    tasks = []
    for name, control, args, expect in COMMON + BY_CLOUD[cloud]:
        for method, path, body in CLEAR + [_fill(c, cloud) for c in control]:
            task = {"name": f"[{name}] control {method} {path}", "ansible.builtin.uri": {
                "url": url + path, "method": method, "status_code": 200}}
            if body is not None:
                task["ansible.builtin.uri"].update(body_format="json", body=body)
            tasks.append(task)
        module_args = {"provider": cloud, "metadata_url": url, **_fill(args, cloud)}
        tasks.append({"name": f"[{name}] eviction_info", "spot.migration.eviction_info": module_args,
                      "register": "r", "ignore_errors": True, "check_mode": check_mode})
        expect = _fill(expect, cloud)
        that = ["r is not changed"]
        if "failed" in expect:
            that += ["r is failed", f"r.msg is search({json.dumps(expect['failed'])}, ignorecase=true)"]
        else:
            that += ["r is not failed"]
            for key, want in expect.items():
                if key == "error_set":
                    that += ["r.error is string", "r.error | length > 0", "r.kind == 'none'"]
                elif key == "left_between":
                    that += [f"r.seconds_left >= {want[0]}", f"r.seconds_left <= {want[1]}"]
                else:
                    that.append(f"r.{key} == {json.dumps(want)}" if want is not None else f"r.{key} is none")
            if expect.get("evicting"):
                that += ["r.notice_id is string", f"r.notice_id.startswith('{cloud}-')"]
        tasks.append({"name": f"[{name}] check", "ansible.builtin.assert": {"that": that, "quiet": True}})
    tasks.append({"name": "clear", "ansible.builtin.uri": {"url": url + "/_sim/fault", "method": "DELETE"}})
    return tasks


def _interpreter(version: str) -> str | None:
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))
    return found[-1] if found else None


@pytest.mark.parametrize(("cloud", "python", "check_mode"), [
    ("aws", None, False), ("gcp", None, False), ("azure", None, False),
    ("aws", "3.8", True), ("gcp", "3.13", False),
])
def test_module_against_simulator(metadata_sim, run_playbook, tmp_path, cloud, python, check_mode):
    interpreter = sys.executable
    if python:
        interpreter = _interpreter(python)
        if interpreter is None:
            pytest.skip(f"no Python {python} here to use as the target interpreter")
    sim = metadata_sim(cloud)
    play = [{"name": f"eviction_info against the {cloud} simulator", "hosts": "localhost", "gather_facts": False,
             "vars": {"ansible_python_interpreter": interpreter}, "tasks": _tasks(cloud, sim.url, check_mode)}]
    path = tmp_path / "play.yml"
    path.write_text(json.dumps(play))
    result = run_playbook(path)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "failed=0" in result.stdout


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_wait_returns_as_soon_as_a_notice_appears(metadata_sim, run_playbook, tmp_path, cloud):
    sim = metadata_sim(cloud)
    kind = {"aws": "spot_interruption", "gcp": "preempt", "azure": "preempt"}[cloud]

    def notice_once_waiting():
        # The notice comes a second after the module's first request: it must have waited for it, however long the
        # playbook took to start on a busy machine.
        deadline = time.monotonic() + 60
        while not httpx.get(sim.url + "/_sim/state").json()["requests"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        httpx.post(sim.url + "/_sim/notice", json={"kind": kind})

    timer = threading.Thread(target=notice_once_waiting, daemon=True)
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"spot.migration.eviction_info": {"provider": cloud, "metadata_url": sim.url, "wait": 60}, "register": "r"},
        {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(tmp_path / "r.json")}},
    ]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    timer.start()
    try:
        start = time.monotonic()
        result = run_playbook(tmp_path / "play.yml")
        took = time.monotonic() - start
    finally:
        timer.join(60)
    assert result.returncode == 0, result.stdout[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["evicting"] is True and r["kind"] == kind
    assert 0.5 < r["waited"] < 30, r["waited"]  # it waited for the notice, and not for the full 60 s
    assert took < 45
    if cloud == "gcp":
        hanging = sum(n for k, n in httpx.get(sim.url + "/_sim/state").json()["requests"].items() if "preempted" in k)
        assert hanging <= 4, "GCP waits with hanging GETs, not 1 s polls"


def test_wait_gives_up_quietly_when_nothing_comes(metadata_sim, run_playbook, tmp_path):
    sim = metadata_sim("azure")
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"spot.migration.eviction_info": {"provider": "azure", "metadata_url": sim.url, "wait": 2,
                                          "poll_interval": 0.5}, "register": "r"},
        {"ansible.builtin.assert": {"that": ["not r.evicting", "r.waited >= 2", "r.kind == 'none'"]}},
    ]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    result = run_playbook(tmp_path / "play.yml")
    assert result.returncode == 0, result.stdout[-3000:]


def test_unreachable_service_fails(run_playbook, tmp_path):
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"spot.migration.eviction_info": {"provider": "gcp", "metadata_url": "http://127.0.0.1:9", "timeout": 1}},
    ]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    result = run_playbook(tmp_path / "play.yml")
    assert result.returncode == 2
    assert "metadata service unreachable" in result.stdout and "http://127.0.0.1:9" in result.stdout


def test_probe_playbook_never_shows_the_imdsv2_token(metadata_sim, run_playbook):
    sim = metadata_sim("aws", v2_only=True)
    httpx.post(sim.url + "/_sim/notice", json={"kind": "spot_interruption"})
    node = {"ansible_connection": "local", "spot_provider": "aws", "spot_metadata_url": sim.url,
            "ansible_python_interpreter": sys.executable}
    inventory = {"spot": {"hosts": {"node-1": node}}}
    result = run_playbook("spot.migration.probe", inventory=inventory, args=["-vvv"])
    assert result.returncode == 0, result.stdout[-3000:]
    assert "EVICTING: aws spot_interruption" in result.stdout
    tokens = httpx.get(sim.url + "/_sim/state").json()["tokens"]
    assert tokens, "the probe used IMDSv2"
    for token in tokens:
        assert token not in result.stdout


def test_probe_playbook_reports_each_host(metadata_sim, run_playbook):
    sims = {c: metadata_sim(c) for c in ("aws", "gcp", "azure")}
    httpx.post(sims["gcp"].url + "/_sim/notice", json={"kind": "preempt"})
    httpx.post(sims["azure"].url + "/_sim/fault", json={"mode": "error", "status": 500})
    hosts = {f"node-{c}": {"ansible_connection": "local", "spot_metadata_url": s.url,
                           "ansible_python_interpreter": sys.executable} for c, s in sims.items()}
    # 5xx is retried until the timeout runs out: only the failing host gets a short one, so a
    # busy machine cannot turn the healthy hosts blind (the default 5 s stays theirs).
    hosts["node-azure"]["probe_timeout"] = 1.5
    inventory = {"spot": {"hosts": hosts}}
    result = run_playbook("spot.migration.probe", inventory=inventory)
    out = result.stdout
    said = [line for line in out.splitlines() if '"msg"' in line]
    assert result.returncode == 0, out[-3000:]
    assert "quiet: aws instance i-" in out, said
    assert "EVICTING: gcp preempt (stop)" in out
    assert "blind: " in out
    assert "1 evicting, 1 blind, 3 probed" in out


def test_lean_by_default_the_module_when_asked_and_the_same_answer(metadata_sim, run_playbook, tmp_path):
    sim = metadata_sim("azure")
    httpx.post(sim.url + "/_sim/notice", json={"kind": "preempt"})
    probe = {"spot.migration.eviction_info": {"provider": "azure", "metadata_url": sim.url}}
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        dict(probe, register="lean"),
        dict(probe, register="module", vars={"spot_lean_modules": False}),
        {"ansible.builtin.copy": {"content": "{{ [lean, module] | to_json }}", "dest": str(tmp_path / "r.json")}},
    ]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    result = run_playbook(tmp_path / "play.yml", args=["-vvv"])
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("spot.migration.eviction_info runs lean") == 1, result.stdout[-3000:]
    lean, module = json.loads((tmp_path / "r.json").read_text())
    volatile = ("checked_at", "elapsed", "seconds_left", "invocation", "raw")

    def steady(value):
        if isinstance(value, dict):
            return {k: steady(v) for k, v in value.items() if k not in volatile}
        return [steady(v) for v in value] if isinstance(value, list) else value

    assert steady(lean) == steady(module)
    assert lean["evicting"] is True and lean["notice_id"] == module["notice_id"]
