"""One version everywhere: the collection, the controller package, the agent, the changelog's newest release and the
execution environment's tag."""

from __future__ import annotations

from pathlib import Path

import yaml

from ansible_collections.spot.migration.plugins.module_utils import _agent
import spot_migration

ROOT = Path(__file__).resolve().parents[2]


def test_one_version_everywhere():
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    releases = yaml.safe_load((ROOT / "changelogs" / "changelog.yaml").read_text())["releases"]
    newest = max(releases, key=lambda v: tuple(int(p) for p in v.split(".")))
    assert spot_migration.__version__ == version
    assert _agent.VERSION == version
    assert newest == version, "release the changelog for the new version: antsibull-changelog release"
    ee = (ROOT / "execution-environment.yml").read_text()
    assert f"spot-migration-ee:{version}" in ee and f"spot-migration-{version}.tar.gz" in (
        ROOT / "ee" / "requirements.yml").read_text()
