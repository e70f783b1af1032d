"""The watcher's configuration: one YAML file, defaults that work on the local fleet.

The HMAC secret never comes from the command line: ``secret_file`` (a file only the watcher's user can
read) or the environment variable named by ``secret_env`` (default ``SPOT_MIGRATION_SECRET``).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
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
    plan: bool = True               # choose per workload how to resume, by the notice's deadline (watch/planner.py)
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
    store: str = ""                 # rclone remote (name:bucket/prefix): each replica also goes to object storage
    store_keep: int = 0             # replicas kept in the store per workload (0: as keep)
    store_transfers: int = 4        # parallel streams of an upload or a restore
    store_rclone: str = "rclone"    # the rclone program on the nodes (a name on their PATH, or an absolute path)


@dataclass
class LostConfig:
    enabled: bool = True            # declare a node lost without a notice, fence it, resume from the replica
    grace: float = 60.0             # agent silent AND probes unreachable for this long (seconds) before "lost"


@dataclass
class WarningsConfig:
    # Early warnings: a node at risk, not taken away yet (AWS rebalance recommendations, GCP and Azure maintenance
    # events, Azure Freeze). Evictions never wait for them; they only get ready.
    kinds: list[str] = field(default_factory=lambda: ["rebalance", "maintenance"])
    prestage: bool = True           # a replication round at once (newest checkpoint copied, a target reserved)
    migrate: bool = False           # true: migrate on a warning as on an eviction notice
    hold: float = 3600.0            # seconds a node stays "at risk" after its warning was noticed


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
    log_format: str = "text"        # text: "date time level message"; json: one object per line
    log_level: str = "info"
    sweep: SweepConfig = field(default_factory=SweepConfig)
    migrate: MigrateConfig = field(default_factory=MigrateConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    lost: LostConfig = field(default_factory=LostConfig)
    warnings: WarningsConfig = field(default_factory=WarningsConfig)

    @property
    def ledger_path(self) -> Path:
        return Path(self.ledger or Path(self.state_dir) / "ledger.sqlite")

    @property
    def runs_dir(self) -> Path:
        return Path(self.state_dir) / "runs"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"listen must be HOST:PORT (a port 0 to 65535), not {self.listen!r}")
        return host or "127.0.0.1", int(port)

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


SCHEMA_FILE = Path(__file__).resolve().parent.parent / "data" / "watch-config.schema.json"
SECTIONS = {"sweep": SweepConfig, "migrate": MigrateConfig, "alerts": AlertConfig, "controller": ControllerConfig,
            "replication": ReplicationConfig, "lost": LostConfig, "warnings": WarningsConfig}


def schema() -> dict[str, Any]:
    """The configuration's JSON Schema (shipped with the package: editors can use it too)."""
    return json.loads(SCHEMA_FILE.read_text())


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the configuration"


def _problem(error: jsonschema.ValidationError) -> str:
    key = _where(error.absolute_path)
    if error.validator == "additionalProperties":
        known = ", ".join(error.schema.get("properties", {}))
        unknown = ", ".join(sorted(set(error.instance) - set(error.schema.get("properties", {}))))
        return f"unknown setting(s) in {key}: {unknown}; known: {known}"
    if error.validator == "not" and key.endswith("extra_vars"):
        given = ", ".join(sorted({"source", "migration_fence", "migration_id"} & set(error.instance)))
        return f"{key} may not set {given}: the watcher sets them"
    if error.validator == "type" and "object" in error.validator_value:
        return f"{key} is {error.instance!r}; it must be a mapping, not {type(error.instance).__name__}"
    allowed = error.schema.get("description") or error.message
    return f"{key} is {error.instance!r}; it must be {allowed}"


def validate(data: Any, where: str = "config") -> None:
    """Every problem of ``data`` against the schema in one ConfigError, each naming the key, the value and what is
    allowed."""
    validator = jsonschema.Draft202012Validator(schema())
    problems = [_problem(e) for e in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])]
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"{where}: {problems[0]}")
        raise ConfigError(f"{where}: {len(problems)} problems:\n  " + "\n  ".join(problems))


def _build(data: dict[str, Any]) -> WatchConfig:
    values = {name: (SECTIONS[name](**value) if name in SECTIONS else value) for name, value in data.items()}
    return WatchConfig(**values)


def load(path: Path | None = None, **overrides: Any) -> WatchConfig:
    """Read the YAML file (if any), apply command-line overrides (None means "not given"), check the whole against
    the schema, then what a schema cannot say (a missing inventory, lost.grace against heartbeat_timeout)."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        data = {} if data is None else data
        if isinstance(data, dict) and "secret" in data:
            raise ConfigError(f"config {path}: put the secret in secret_file or ${SECRET_ENV}, not in the config")
    where = f"config {path}" if path is not None else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of settings, not {type(data).__name__}: {data!r}")
    for key, value in overrides.items():
        if key == "controller":
            if value:
                data["controller"] = {**(data.get("controller") or {}), **value}
        elif value is not None:
            data[key] = value
    validate(data, where)
    config = _build(data)
    _check(config, where)
    return config


def _check(config: WatchConfig, where: str) -> None:
    config.host_port  # noqa: B018 - validates listen
    if config.inventory and "," not in config.inventory and not Path(config.inventory).expanduser().exists():
        raise ConfigError(f"{where}: inventory {config.inventory!r} does not exist (a file or directory, or a "
                          f"comma-separated host list)")
    if float(config.lost.grace) < float(config.heartbeat_timeout):
        raise ConfigError(f"{where}: lost.grace is {config.lost.grace!r}; it must be at least heartbeat_timeout "
                          f"({config.heartbeat_timeout} s): a node is never lost before its agent is silent")
