"""A local fleet shared by the tests of one pytest worker, brought down by pid at the end, even on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spot_migration import fleet as fleet_mod
from tests.helpers.fleet import Migrations, play_runner, webhook_server, worker_base

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fleet")
    up = fleet_mod.up(directory, nodes=4, base_address=worker_base(), log=lambda *_: None)
    try:
        yield up
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


@pytest.fixture(scope="session")
def inventory(fleet) -> dict:
    return yaml.safe_load(fleet.inventory_path.read_text())


@pytest.fixture
def fleet_play(fleet, ansible_env, tmp_path):
    return play_runner(fleet, ansible_env, tmp_path)


@pytest.fixture
def webhook():
    with webhook_server() as hook:
        yield hook


@pytest.fixture
def migrations(fleet, fleet_play, ansible_env, tmp_path):
    m = Migrations(fleet, fleet_play, ansible_env, tmp_path)
    try:
        yield m
    finally:
        m.cleanup()
        for node in ("node1", "node2", "node3"):
            fleet_mod.inject(fleet.dir, node, "clear")
