"""The watcher's configuration: defaults that work, errors that name the setting, the secret never inline."""

from __future__ import annotations

import pytest

from spot_migration.watch.config import ConfigError, load

GOOD = "0123456789abcdef0123456789abcdef"


def test_defaults_work_on_the_local_fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOT_MIGRATION_SECRET", GOOD)
    config = load(None, inventory="inv.yml", state_dir=str(tmp_path))
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
    ("listen: nowhere", "listen must be HOST:PORT, not 'nowhere'"),
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
])
def test_bad_settings_are_named(tmp_path, text, message):
    path = tmp_path / "watch.yml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert message in str(caught.value)


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
