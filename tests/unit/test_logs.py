"""Logs of the watcher and the agent: a date (UTC) and a level on every line, or one JSON object per line."""

from __future__ import annotations

import io
import json
import re

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent
from ansible_collections.spot.migration.plugins.module_utils._common import Warning_, log_line
from spot_migration import logs

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warning|error) +(.*)$")


def test_watcher_text_lines_carry_date_and_level():
    out = io.StringIO()
    log = logs.Log(stream=out)
    log("watching 3 spot node(s)")
    log(logs.warning("push from 127.0.0.9 refused: bad signature"))
    log(logs.error("sweep failed: RuntimeError: boom"))
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group(1) for line in lines] == ["info", "warning", "error"]
    assert LINE.match(lines[1]).group(2) == "push from 127.0.0.9 refused: bad signature"


def test_watcher_json_lines_and_level_filter():
    out = io.StringIO()
    log = logs.Log(fmt="json", level="warning", stream=out)
    log("not shown: below the level")
    log(logs.warning('a "quoted" warning'))
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and record["message"] == 'a "quoted" warning'
    assert record["logger"] == "spot_migration.watch" and record["time"].endswith("Z")


def test_a_level_is_still_a_plain_string_for_plain_callables():
    seen = []

    def plain(msg):
        seen.append(msg)

    plain(logs.warning("x"))
    assert seen == ["x"] and isinstance(seen[0], str)


def test_bad_log_settings_are_refused():
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.Log(fmt="xml")
    with pytest.raises(ValueError, match="log level 'loud'"):
        logs.Log(level="loud")


def test_agent_lines_text_and_json():
    assert LINE.match(log_line(0.25, "agent up")).groups() == ("info", "agent up")
    assert log_line(0.25, "agent up").startswith("1970-01-01T00:00:00.250Z")
    record = json.loads(log_line(0.0, Warning_("heartbeat not acknowledged: refused"), "json"))
    assert record == {"time": "1970-01-01T00:00:00.000Z", "level": "warning", "logger": "spot_migration.agent",
                      "message": "heartbeat not acknowledged: refused"}


def test_agent_config_refuses_an_unknown_log_format(tmp_path):
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"node": "n", "watcher_url": "http://127.0.0.1:1", "secret_file": "s",
                                  "state_dir": str(tmp_path), "log_format": "xml"}))
    with pytest.raises(_agent.AgentError, match="log_format is 'xml'; it must be text or json"):
        _agent.load_config(str(config))
