"""The watcher's configuration: defaults that work, errors that name the setting, the secret never inline."""

from __future__ import annotations

import pytest

from spot_migration.watch.config import ConfigError, load

GOOD = "0123456789abcdef0123456789abcdef"


def test_defaults_work_on_the_local_fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOT_MIGRATION_SECRET", GOOD)
    config = load(None, state_dir=str(tmp_path))
    assert config.host_port == ("127.0.0.1", 8787)
    assert config.sweep.interval == 15 and config.sweep.hosts == "silent"
    assert config.ledger_path == tmp_path / "ledger.sqlite"
    assert config.secret() == GOOD.encode()


@pytest.mark.parametrize("text, message", [
    ("sweep: {interval: 0}", "sweep.interval is 0"),
    ("sweep: {hosts: some}", "sweep.hosts is 'some'"),
    ("migrate: {max_concurrent: 0}", "migrate.max_concurrent is 0"),
    ("migrate: {transfer: ftp}", "migrate.transfer is 'ftp'"),
    ("migrate: {batch_window_max: 60}", "migrate.batch_window_max is 60"),
    ("listen: nowhere", "listen is 'nowhere'; it must be HOST:PORT"),
    ("listen: 'h:99999'", "a port 0 to 65535"),
    # The cases a new user hit: each one named with its value and what is allowed, never a traceback.
    ("sweep: {interval: fast}", "sweep.interval is 'fast'; it must be a positive number of seconds"),
    ('migrate: {enabled: "no"}', "migrate.enabled is 'no'; it must be false: record and alert, never migrate (true or "
                                 "false, unquoted)"),
    ("alerts: {webhooks: [hooks.example.com/x]}", "alerts.webhooks[0] is 'hooks.example.com/x'; it must be an http://"),
    ("alerts: {webhooks: https://hooks.example.com/x}", "alerts.webhooks is 'https://hooks.example.com/x'; it must be a "
                                                        "list of"),
    ("alerts: {retries: -1}", "alerts.retries is -1"),
    ("replication: {enabled: 1}", "replication.enabled is 1"),
    ("migrate: {max_concurrent: 2.5}", "migrate.max_concurrent is 2.5"),
    ("log_format: xml", "log_format is 'xml'; it must be the log's format (text or json)"),
    ("[1, 2]", "must be a mapping of settings"),
    ("sweeep: {}", "unknown setting(s) in"),
    ("sweep: {every: 3}", "unknown setting(s) in"),
    ("sweep: [1]", "must be a mapping"),
    ("secret: hunter2hunter2hunter2", "not in the config"),
    ("migrate: {extra_vars: {source: node9}}", "may not set source"),
    ("listen: [", "not valid YAML"),
    ("lost: {grace: 5}", "lost.grace is 5; it must be at least heartbeat_timeout"),
    ("replication: {keep: 0}", "replication.keep is 0"),
    ("replication: {interval: -1}", "replication.interval is -1"),
    ("controller: {url: awx.example.com}", "controller.url is 'awx.example.com'"),
    ("warnings: {kinds: [reboot]}", "warnings.kinds[0] is 'reboot'; it must be rebalance or maintenance"),
    ("warnings: {kinds: rebalance}", "warnings.kinds is 'rebalance'; it must be a list of rebalance"),
    ("warnings: {hold: 0}", "warnings.hold is 0"),
    ('warnings: {migrate: "yes"}', "warnings.migrate is 'yes'; it must be migrate on a warning"),
    ("replication: {store: 'my bucket'}", "replication.store is 'my bucket'; it must be an rclone remote"),
    ("replication: {store_rclone: 'rclone; rm -rf /'}",
     "replication.store_rclone is 'rclone; rm -rf /'; it must be the rclone program"),
])
def test_bad_settings_are_named(tmp_path, text, message):
    path = tmp_path / "watch.yml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert message in str(caught.value)


def test_every_problem_is_named_at_once(tmp_path):
    path = tmp_path / "watch.yml"
    path.write_text("sweep: {interval: fast}\nmigrate: {enabled: 'yes', transfer: ftp}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    text = str(caught.value)
    assert "3 problems" in text
    assert "migrate.enabled is 'yes'" in text and "migrate.transfer is 'ftp'" in text and "sweep.interval is 'fast'" in text


def test_a_missing_inventory_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"inventory '.*/nowhere.yml' does not exist"):
        load(None, inventory=str(tmp_path / "nowhere.yml"))
    (tmp_path / "inv.yml").write_text("all: {}\n")
    assert load(None, inventory=str(tmp_path / "inv.yml")).inventory.endswith("inv.yml")
    assert load(None, inventory="node1,node2,").inventory == "node1,node2,"  # a host list, as ansible takes it


def test_command_line_overrides_are_checked_too(tmp_path):
    with pytest.raises(ConfigError, match="controller.url is 'awx'"):
        load(None, controller={"url": "awx"})
    path = tmp_path / "watch.yml"
    path.write_text("controller: {job_template: migrate, verify_ssl: false}\n")
    config = load(path, controller={"url": "https://awx.example.com"})
    assert (config.controller.url, config.controller.job_template, config.controller.verify_ssl) == (
        "https://awx.example.com", "migrate", False)


def test_the_schema_knows_every_setting():
    """The shipped JSON Schema and the dataclasses describe the same settings (a new setting needs both)."""
    from dataclasses import fields

    from spot_migration.watch.config import SECTIONS, WatchConfig, schema

    props = schema()["properties"]
    assert set(props) == {f.name for f in fields(WatchConfig)}
    for name, cls in SECTIONS.items():
        assert set(props[name]["properties"]) == {f.name for f in fields(cls)}, name


def test_secret_file_must_be_private_and_long_enough(tmp_path, monkeypatch):
    monkeypatch.delenv("SPOT_MIGRATION_SECRET", raising=False)
    secret = tmp_path / "secret"
    secret.write_text(GOOD + "\n")
    secret.chmod(0o644)
    config = load(None, secret_file=str(secret))
    with pytest.raises(ConfigError, match="readable by others"):
        config.secret()
    secret.chmod(0o600)
    assert config.secret() == GOOD.encode()
    secret.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        config.secret()
    with pytest.raises(ConfigError, match="no HMAC secret"):
        load(None).secret()
    with pytest.raises(ConfigError, match="No such file"):
        load(None, secret_file=str(tmp_path / "missing")).secret()
