"""The Prometheus rules and the Grafana dashboard shipped in contrib/, checked by the real tools: promtool checks and
unit-tests the rules, checks every dashboard query's PromQL, and a real Prometheus scrapes a running watcher, loads
the rules (all healthy) and answers every dashboard query."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from spot_migration.watch.app import Watcher
from spot_migration.watch.config import load

from tests.helpers.fleet import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "spot-migration.rules.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "spot-migration-dashboard.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: the Debian package prometheus provides it (hacking/bootstrap.sh installs it)"
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard query, Grafana's variables replaced as Grafana would."""
    data = json.loads(DASHBOARD.read_text())
    out = []
    for panel in data["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace('job=~"$job"', 'job=~".*"')
            assert "$" not in expr, (panel["title"], expr)
            out.append((panel["title"], expr))
    return out


def test_rules_pass_promtool_check_and_their_unit_tests():
    check = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([tool("promtool"), "test", "rules", "tests.yml"], cwd=RULES.parent, capture_output=True,
                          text=True, check=False)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] == "spot-migration" and {v["name"] for v in data["templating"]["list"]} == {"datasource", "job"}
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_title, expr) in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def watcher(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOT_MIGRATION_SECRET", "0123456789abcdef0123456789abcdef")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    spot: {hosts: {}}\n")
    port = free_port()
    config = load(None, inventory=str(inventory), listen=f"127.0.0.1:{port}", state_dir=str(tmp_path / "state"))
    config.sweep.hosts = "none"
    config.replication.enabled = False
    config.lost.enabled = False
    w = Watcher(config, log=lambda *_: None)
    w.start()
    yield f"127.0.0.1:{port}"
    w.stop(wait=30)


def test_a_real_prometheus_scrapes_the_watcher_and_answers_the_dashboard(watcher, tmp_path):
    port = free_port()
    shutil.copy(RULES, tmp_path / "rules.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": "spot-migration", "static_configs": [{"targets": [watcher]}]}]}))
    with open(tmp_path / "prometheus.log", "w") as log:
        proc = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def query(expr: str) -> dict:
            answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
            assert answer["status"] == "success", (expr, answer)
            return answer["data"]

        def scraped():
            try:
                return [r for r in query('up{job="spot-migration"}')["result"] if r["value"][1] == "1"]
            except httpx.HTTPError:
                return None

        try:
            wait_for(scraped, 60, "Prometheus to scrape the watcher", interval=0.5)
        except AssertionError:
            raise AssertionError((tmp_path / "prometheus.log").read_text()[-3000:]) from None
        # Counters are there at 0 before any event: a rate() or an alert on them works from the first scrape.
        failed = query('spot_alerts_total{job="spot-migration",outcome="failed"}')["result"]
        assert [r["value"][1] for r in failed] == ["0"], failed
        for _title, expr in dashboard_queries():
            query(expr)  # valid against the real data (an error would fail here), empty or not
        assert query('spot_migrations_in_flight{job="spot-migration"}')["result"]

        def rules_evaluated():
            groups = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

        rules = wait_for(rules_evaluated, 30, "Prometheus to evaluate the rules", interval=0.5)
        problems = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert len(rules) == 15 and not problems, problems
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        assert not firing, firing  # an idle, healthy watcher fires nothing
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
