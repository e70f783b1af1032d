"""The watcher's configuration: one YAML file, defaults that work on the local fleet.

The HMAC secret never comes from the command line: ``secret_file`` (a file only the watcher's user can
read) or the environment variable named by ``secret_env`` (default ``SPOT_MIGRATION_SECRET``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .. import module_utils

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "spot-migration"
SECRET_ENV = "SPOT_MIGRATION_SECRET"


class ConfigError(ValueError):
    """The configuration is wrong; the message names the setting and the value."""


@dataclass
class SweepConfig:
    interval: float = 15.0
    hosts: str = "silent"          # silent: nodes whose agent is quiet or missing; all; none
    group: str = "spot"
    timeout: float = 5.0
    forks: int = 100                # at most this many hosts probed in parallel (a sweep forks one per host)


@dataclass
class MigrateConfig:
    enabled: bool = True            # false: record and alert, never migrate (observe-only roll-out)
    transfer: str = "rsync"
    max_concurrent: int = 4         # migrate runs at once (a wave of evictions is one run)
    batch_window: float = 0.5       # a wave's run starts once no notice has joined it for this long (0: no waiting)
    batch_window_max: float = 2.0   # ... and at the latest this long after its first notice
    batch_max: int = 16             # migrations in one run at most
    forks: int = 20                 # hosts one migration's plays reach in parallel (candidate targets)
    extra_vars: dict[str, Any] = field(default_factory=dict)
    timeout: float = 1800.0


@dataclass
class AlertConfig:
    webhooks: list[str] = field(default_factory=list)
    retries: int = 3
    timeout: float = 5.0


@dataclass
class ReplicationConfig:
    enabled: bool = True            # copy every new complete checkpoint to the workload's pre-reserved target
    interval: float = 10.0          # seconds between rounds
    keep: int = 2                   # replicas kept per workload
    bwlimit: int = 0                # rsync --bwlimit in KiB/s (0: none)
    capacity_every: int = 6         # rounds between asking what runs where and the GPUs (and when needed)
    reservation_ttl: float = 900.0  # the pre-reservation is renewed every round


@dataclass
class LostConfig:
    enabled: bool = True            # declare a node lost without a notice, fence it, resume from the replica
    grace: float = 60.0             # agent silent AND probes unreachable for this long (seconds) before "lost"


@dataclass
class ControllerConfig:
    url: str = ""                   # set: migrations run as AWX / Automation Controller jobs instead of ansible-runner
    job_template: str = "spot-migration migrate"   # name or id of the migrate job template
    api_path: str = "auto"          # auto (asks GET /api/), /api/v2/ (AWX), /api/controller/v2/ (AAP 2.5+ gateway)
    token_file: str = ""
    token_env: str = "SPOT_MIGRATION_CONTROLLER_TOKEN"
    verify_ssl: bool = True
    poll_interval: float = 2.0
    timeout: float = 30.0           # per API request


@dataclass
class WatchConfig:
    inventory: str = ""
    listen: str = "127.0.0.1:8787"
    state_dir: str = str(DEFAULT_STATE_DIR)
    ledger: str = ""                # default: <state_dir>/ledger.sqlite
    secret_file: str = ""
    secret_env: str = SECRET_ENV
    max_skew: float = 300.0
    heartbeat_timeout: float = 15.0  # an agent silent this long is swept (and reported silent)
    lease: float = 15.0
    sweep: SweepConfig = field(default_factory=SweepConfig)
    migrate: MigrateConfig = field(default_factory=MigrateConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    lost: LostConfig = field(default_factory=LostConfig)

    @property
    def ledger_path(self) -> Path:
        return Path(self.ledger or Path(self.state_dir) / "ledger.sqlite")

    @property
    def runs_dir(self) -> Path:
        return Path(self.state_dir) / "runs"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        try:
            return host or "127.0.0.1", int(port)
        except ValueError:
            raise ConfigError(f"listen must be HOST:PORT, not {self.listen!r}") from None

    def secret(self) -> bytes:
        """The shared HMAC secret, from the file or the environment (never the command line)."""
        signing = module_utils("_signing")
        if self.secret_file:
            path = Path(self.secret_file).expanduser()
            try:
                mode = path.stat().st_mode
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"secret_file {path}: {exc.strerror}") from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"secret_file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                                  f"chmod 600 it")
            source = f"secret_file {path}"
        elif os.environ.get(self.secret_env):
            text, source = os.environ[self.secret_env], f"environment variable {self.secret_env}"
        else:
            raise ConfigError(f"no HMAC secret: set secret_file in the config or the environment variable "
                              f"{self.secret_env}")
        try:
            return signing.load_secret(text, source)
        except signing.SignatureError as exc:
            raise ConfigError(str(exc)) from None


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, not {type(data).__name__}: {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(unknown)}; known: {', '.join(known)}")
    values = {}
    for name, value in data.items():
        sub = {"sweep": SweepConfig, "migrate": MigrateConfig, "alerts": AlertConfig,
               "controller": ControllerConfig, "replication": ReplicationConfig, "lost": LostConfig}.get(name)
        values[name] = _build(sub, value, f"{where}.{name}") if sub and cls is WatchConfig else value
    return cls(**values)


def load(path: Path | None = None, **overrides: Any) -> WatchConfig:
    """Read the YAML file (if any), then apply command-line overrides (None means "not given")."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if "secret" in data:
            raise ConfigError(f"config {path}: put the secret in secret_file or ${SECRET_ENV}, not in the config")
    config = _build(WatchConfig, data, str(path or "config"))
    for key, value in overrides.items():
        if key == "controller":
            for name, sub in (value or {}).items():
                setattr(config.controller, name, sub)
        elif value is not None:
            setattr(config, key, value)
    _check(config)
    return config


def _check(config: WatchConfig) -> None:
    config.host_port  # noqa: B018 - validates listen
    checks = [
        (config.sweep.hosts in ("silent", "all", "none"), "sweep.hosts", config.sweep.hosts, "silent, all or none"),
        (float(config.sweep.interval) > 0, "sweep.interval", config.sweep.interval, "a positive number of seconds"),
        (int(config.migrate.max_concurrent) >= 1, "migrate.max_concurrent", config.migrate.max_concurrent, "1 or more"),
        (0 <= float(config.migrate.batch_window) <= 10, "migrate.batch_window", config.migrate.batch_window,
         "0 to 10 seconds (a fraction of a second is enough for a wave; every second waited is lost from the window)"),
        (0 <= float(config.migrate.batch_window_max) <= 30, "migrate.batch_window_max", config.migrate.batch_window_max,
         "0 to 30 seconds (never less than migrate.batch_window: the larger of the two counts)"),
        (int(config.migrate.batch_max) >= 1, "migrate.batch_max", config.migrate.batch_max, "1 or more"),
        (config.migrate.transfer in ("rsync", "relay", "shared"), "migrate.transfer", config.migrate.transfer,
         "rsync, relay or shared"),
        (float(config.max_skew) > 0, "max_skew", config.max_skew, "a positive number of seconds"),
        (isinstance(config.alerts.webhooks, list), "alerts.webhooks", config.alerts.webhooks, "a list of URLs"),
        (not config.controller.url or config.controller.url.startswith(("http://", "https://")), "controller.url",
         config.controller.url, "an http:// or https:// URL"),
        (float(config.controller.poll_interval) > 0, "controller.poll_interval", config.controller.poll_interval,
         "a positive number of seconds"),
        (bool(str(config.controller.job_template).strip()), "controller.job_template", config.controller.job_template,
         "a job template name or id"),
        (float(config.replication.interval) > 0, "replication.interval", config.replication.interval,
         "a positive number of seconds"),
        (int(config.replication.keep) >= 1, "replication.keep", config.replication.keep, "1 or more"),
        (float(config.lost.grace) >= float(config.heartbeat_timeout), "lost.grace", config.lost.grace,
         f"at least heartbeat_timeout ({config.heartbeat_timeout} s): a node is never lost before its agent is silent"),
    ]
    for ok, name, value, expected in checks:
        if not ok:
            raise ConfigError(f"{name} is {value!r}; it must be {expected}")
    forbidden = {"source", "migration_fence", "migration_id"} & set(config.migrate.extra_vars)
    if forbidden:
        raise ConfigError(f"migrate.extra_vars may not set {', '.join(sorted(forbidden))}: the watcher sets them")
