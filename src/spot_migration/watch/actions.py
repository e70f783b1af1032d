"""Actions: the playbooks the watcher runs through ansible-runner (migrate, the fallback probe sweep, and the
small look-and-clean-up plays a resumed migration needs). Each run gets its own private data dir and its own
SSH control directory; nothing secret is passed to them.

Every process of a migration's run carries ``SPOT_MIGRATION_RUN=<migration id>`` in its environment, so a
watcher that takes over a migration can stop whatever an earlier (killed) watcher left running for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ansible_runner

from .. import collections_env, logs

RUN_MARKER = "SPOT_MIGRATION_RUN"

# The migrate playbook's coarse steps report what they did as data: every result of migration_source and
# migration_target carries ``migration: {id, step, workloads}``, the joint reservation ``reservations`` (owners
# ``<migration id>/<workload>``). The watcher follows those, never task or play names (people rename them).
STEP_STATES: dict[str, tuple[str, ...]] = {
    "checkpointing": ("checkpointing",),   # asked, not waited for: the reservation comes while they are written
    "checkpointed": ("checkpointing", "checkpointed"),
    "transferred": ("transferring",),
    "transfer_failed": ("transferring",),
    "started": ("verified", "resuming"),
}


def kill_marked(marker: str, exclude: int | None = None) -> list[int]:
    """SIGKILL every process whose environment carries ``SPOT_MIGRATION_RUN=<marker>`` (or a wave's
    ``SPOT_MIGRATION_RUN=<id>,<id>,...`` with the marker among them): the remains of a run whose watcher died.
    Returns the pids."""
    prefix = f"{RUN_MARKER}=".encode()
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), exclude):
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if any(marker in v[len(prefix):].decode(errors="replace").split(",") for v in environ if v.startswith(prefix)):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


# ansible-playbook checks on its workers every millisecond by default: 0.05 CPU-seconds for every second a run waits
# on a node (a transfer, a resumed job's first checkpoint), most of a long migration's controller CPU. A hundredth of a
# second adds at most that much to noticing a task's end. The setting has no environment variable, only ansible.cfg.
RUN_CONFIG = "[defaults]\ninternal_poll_interval = 0.01\n"


def run_config(directory: Path) -> dict[str, str]:
    """Environment for the runs: ``ANSIBLE_CONFIG`` pointing at an ansible.cfg of ours (RUN_CONFIG, written into
    ``directory``) when ansible finds none of the user's (``ANSIBLE_CONFIG``, ./ansible.cfg, ~/.ansible.cfg,
    /etc/ansible/ansible.cfg); nothing when it does - a user's configuration is never replaced (docs/tuning.md says
    how to set the poll interval there)."""
    from ansible.config.manager import find_ini_config_file

    if find_ini_config_file():
        return {}
    path = Path(directory) / "ansible.cfg"
    if not path.exists() or path.read_text() != RUN_CONFIG:
        path.write_text(RUN_CONFIG)
    return {"ANSIBLE_CONFIG": str(path)}


class Actions:
    """Runs plays through ansible-runner for one inventory."""

    def __init__(self, inventory: str, runs_dir: Path, log: Callable[[str], None] = print,
                 collections: Path | None = None):
        self.inventory = str(Path(inventory).resolve())
        self.collections = collections
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runs_dir, 0o700)
        self.log = log
        self._kept: dict[str, str] = {}

    def kept_control_dir(self, purpose: str) -> str:
        """An SSH control directory that outlives one run, for runs that come back every few seconds to the same
        hosts (the sweep): their connections stay open (ControlPersist) instead of being set up again each time.
        Removed, with its master connections, by ``close``."""
        if purpose not in self._kept:
            self._kept[purpose] = tempfile.mkdtemp(prefix=f"spot-cp-{purpose}-")
        return self._kept[purpose]

    def close(self) -> None:
        """Stop the SSH master connections of the kept control directories and remove them."""
        for directory in self._kept.values():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                if cmdline.startswith(b"ssh") and directory.encode() in cmdline:
                    try:
                        os.kill(int(entry.name), signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            shutil.rmtree(directory, ignore_errors=True)
        self._kept.clear()

    def _env(self, marker: str | None, control_dir: str) -> dict[str, str]:
        env = {
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections) if self.collections else collections_env(),
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            # One SSH round trip per task instead of three (no sudo requiretty in play): the watcher's runs are its
            # latency.
            "ANSIBLE_PIPELINING": "true",
            **run_config(self.runs_dir),
        }
        if marker:
            env[RUN_MARKER] = marker
        return env

    def run(self, ident: str, playbook: str | list, extravars: dict[str, Any] | None = None,
            on_event: Callable[[dict], None] | None = None, marker: str | None = None, limit: str | None = None,
            timeout: float | None = None, cancel: Callable[[], bool] | None = None,
            forks: int | None = None, control_dir: str | None = None) -> tuple[int, Path]:
        """Run one playbook (a name like ``spot.migration.migrate`` or a list of plays). Returns (rc, private dir)."""
        private = self.runs_dir / ident
        private.mkdir(parents=True, exist_ok=True)
        if isinstance(playbook, list):
            (private / "project").mkdir(exist_ok=True)
            (private / "project" / "play.yml").write_text(json.dumps(playbook))
            playbook = "play.yml"
        own_control_dir = control_dir is None
        control_dir = control_dir or tempfile.mkdtemp(prefix="spot-cp-")
        envvars = self._env(marker, control_dir)
        if forks:
            envvars["ANSIBLE_FORKS"] = str(int(forks))

        def handler(event: dict) -> bool:
            if on_event is not None:
                try:
                    on_event(event)
                except Exception as exc:  # noqa: BLE001 - a bad handler must not kill the run; report it
                    self.log(logs.error(f"{ident}: event handler failed: {type(exc).__name__}: {exc}"))
            return True

        try:
            result = ansible_runner.run(
                private_data_dir=str(private), playbook=playbook, inventory=self.inventory, extravars=extravars or {},
                envvars=envvars, quiet=True, event_handler=handler, limit=limit,
                cancel_callback=cancel,
                settings={"suppress_env_files": True, "job_timeout": int(timeout) if timeout else 0},
            )
            return result.rc, private
        finally:
            if own_control_dir:
                shutil.rmtree(control_dir, ignore_errors=True)


class MigrationEvents:
    """Turns the data a migrate run emits into ledger states and facts (workloads, targets, steps), per migration.

    ``advance(state, **fields)`` for one migration, or ``routes={migration id: advance}`` for a wave (one run over
    several sources): each result names the migration it belongs to, so each advances its own ledger entry."""

    def __init__(self, advance: Callable[..., Any] | None = None, routes: dict[str, Callable[..., Any]] | None = None,
                 hosts: dict[str, str] | None = None):
        self.routes = dict(routes or {})
        self.default = advance
        self.hosts = dict(hosts or {})  # source host -> migration id: a failure there without data is that one's
        self.failures: list[str] = []
        self.by_id: dict[str, list[str]] = {}
        self.unattributed: list[str] = []
        self.gangs: dict[str, list[str]] = {}  # gang -> the sources where migrate found (and left) one of its members

    def _advance(self, migration_id: str | None, state: str, **fields: Any) -> None:
        target = self.routes.get(migration_id or "") if self.routes else self.default
        if target is not None:
            target(state, **fields)

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        res = data.get("res") or {}
        if kind in ("runner_on_ok", "runner_on_failed") and isinstance(res, dict):
            self._result(res)
            for gang in sorted(set((res.get("gang_members") or {}).values())) if isinstance(
                    res.get("gang_members"), dict) else []:
                if str(data.get("host")) not in self.gangs.setdefault(gang, []):
                    self.gangs[gang].append(str(data.get("host")))
        if kind in ("runner_on_failed", "runner_item_on_failed", "runner_on_unreachable"):
            if not data.get("ignore_errors"):
                message = f"{data.get('host')}: {res.get('msg') or res.get('stderr') or res}"[:600]
                self.failures.append(message)
                mid = (res.get("migration") or {}).get("id") if isinstance(res.get("migration"), dict) else None
                mid = mid or self.hosts.get(str(data.get("host")))
                if mid:
                    self.by_id.setdefault(mid, []).append(message)
                else:
                    self.unattributed.append(message)

    def _result(self, res: dict) -> None:
        migration = res.get("migration")
        if isinstance(migration, dict) and migration.get("id") and migration.get("step"):
            self._step(migration)
        for r in res.get("reservations") or []:
            owner = str(r.get("owner") or "")
            if "/" in owner and r.get("target"):
                mid, name = owner.split("/", 1)
                self._advance(mid, "target_reserved", detail=f"{name} -> {r['target']}", targets={name: r["target"]})

    def _step(self, migration: dict) -> None:
        rows = migration.get("workloads") or {}
        step = migration["step"]
        if step in ("checkpointing", "checkpointed"):
            self._advance(migration["id"], "checkpointing", detail="workloads", workloads=sorted(rows))
            if step == "checkpointed":
                self._advance(migration["id"], "checkpointed", detail="emergency checkpoints")
            return
        if step in ("transferred", "transfer_failed"):
            steps = {n: r["step"] for n, r in rows.items() if r.get("step") is not None}
            moved = {n: r["target"] for n, r in rows.items() if r.get("target") and not r.get("transfer_error")}
            self._advance(migration["id"], "transferring", detail=step, steps=steps, **({"targets": moved} if moved else {}))
            return
        if step == "started":
            # A target's rows may belong to several migrations of a wave: each row names its own.
            by_id: dict[str, dict[str, str]] = {}
            for name, row in rows.items():
                by_id.setdefault(row.get("migration_id") or migration["id"], {})[name] = migration.get("target")
            for mid, targets in by_id.items():
                self._advance(mid, "verified", detail=f"on {migration.get('target')}", targets=targets)
                self._advance(mid, "resuming", detail=f"on {migration.get('target')}")


def workload_plays(hosts: list[str], names: list[str], remove_from: str | None = None) -> list[dict]:
    """A play listing the workloads on ``hosts`` (and, when ``remove_from`` is given, removing ``names``
    from that host first: the clean-up of a migration whose target copy already runs)."""
    plays = []
    if remove_from:
        plays.append({"name": "Remove the moved workloads from the source", "hosts": remove_from, "gather_facts": False,
                      "ignore_unreachable": True, "tasks": [
                          {"name": "List the workloads", "register": "found", "spot.migration.workload_info": {
                              "workload_root": "{{ spot_workload_root | default(omit) }}"}},
                          {"name": "Remove the moved workload", "loop": "{{ found.workloads | selectattr('name', 'in', names) | list }}",
                           "loop_control": {"label": "{{ item.name }}"}, "vars": {"names": names},
                           "spot.migration.workload": {"name": "{{ item.name }}", "runtime": "{{ item.runtime }}",
                                                       "workload_root": "{{ spot_workload_root | default(omit) }}",
                                                       "state": "absent", "stop_timeout": 10}}]})
    plays.append({"name": "Where do the workloads run", "hosts": ",".join(hosts), "gather_facts": False,
                  "ignore_unreachable": True, "tasks": [
                      {"name": "List the workloads", "spot.migration.workload_info": {
                          "workload_root": "{{ spot_workload_root | default(omit) }}"}}]})
    return plays


def locate(actions: Actions, ident: str, hosts: list[str], remove: tuple[str, list[str]] | None = None,
           marker: str | None = None) -> dict[str, dict[str, bool] | None]:
    """{host: {workload: running}} (None for an unreachable host)."""
    found: dict[str, dict[str, bool] | None] = {h: None for h in hosts}

    def on_event(event: dict) -> None:
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("play") == "Where do the workloads run":
            found[data["host"]] = {w["name"]: bool(w["running"]) for w in data["res"].get("workloads", [])}

    plays = workload_plays(sorted(set(hosts)), remove[1] if remove else [], remove[0] if remove else None)
    rc, private = actions.run(ident, plays, on_event=on_event, marker=marker)
    if rc == 0:
        shutil.rmtree(private, ignore_errors=True)  # kept only when it failed, to be looked at
    return found


# The sweep's play: only the probe (spot.migration.probe also prints and sets facts for people; each more task is one
# more fork per host on the controller, every sweep).
SWEEP_PLAY = [{"name": "Probe for eviction notices", "hosts": "{{ probe_hosts }}", "gather_facts": False, "tasks": [
    {"name": "Read the eviction notice", "spot.migration.eviction_info": {
        "provider": "{{ spot_provider | default('auto') }}", "metadata_url": "{{ spot_metadata_url | default(omit) }}",
        "timeout": "{{ probe_timeout }}", "imds_version": "{{ spot_imds_version | default('auto') }}",
        "fail_on_error": False}}]}]


def sweep(actions: Actions, hosts: list[str], timeout: float, on_notice: Callable[[str, dict], None],
          forks: int = 100) -> tuple[int, float]:
    """One run probing every host in ``hosts`` at once (one fork per host, at most ``forks``), over SSH connections
    kept open between sweeps; ``on_notice(host, result)`` for each host's result (blind ones included). Returns
    (rc, seconds)."""
    start = time.monotonic()

    def on_event(event: dict) -> None:
        data = event.get("event_data") or {}
        res = data.get("res") or {}
        # eviction_info's result, by its shape (a notice), whatever the task is called.
        if event.get("event") == "runner_on_ok" and isinstance(res, dict) and {"notice_id", "evicting", "checked_at"} <= set(res):
            on_notice(data["host"], dict(res))
        elif event.get("event") == "runner_on_unreachable":
            on_notice(data["host"], {"error": f"unreachable: {(data.get('res') or {}).get('msg', '')}"[:300],
                                     "evicting": False, "kind": "none", "notice_id": None})

    ident = f"sweep-{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6}"
    rc, private = actions.run(ident, SWEEP_PLAY, {"probe_hosts": ",".join(hosts), "probe_timeout": timeout},
                              on_event=on_event, forks=max(1, min(len(hosts), int(forks))),
                              control_dir=actions.kept_control_dir("sweep"))
    shutil.rmtree(private, ignore_errors=True)  # a sweep every 15 s would fill the disk; its results are in the ledger
    return rc, time.monotonic() - start
