"""``make demo``: three clouds' metadata simulators, three nodes, real ansible-playbook runs.

Round 1 probes the quiet nodes; round 2 waits on all three while a notice is injected
into each in turn and prints every normalised notice the moment its host reports it;
round 3 shows the awkward cases (a rebalance recommendation, an Azure event for another
VM, a metadata service that only answers 500) reported as what they are.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ansible_runner
import yaml
from rich.console import Console
from rich.table import Table

from . import collections_env
from .sim import control

CLOUDS = ("aws", "gcp", "azure")
NOTICE_FOR = {"aws": "spot_interruption", "gcp": "preempt", "azure": "preempt"}


def _inventory(sims: dict[str, control.SimProcess]) -> dict[str, Any]:
    hosts = {
        f"node-{cloud}": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "spot_provider": cloud,
            "spot_metadata_url": sim.url,
        }
        for cloud, sim in sims.items()
    }
    return {"all": {"children": {"spot": {"hosts": hosts}}}}


class ProbeRun:
    """One ``ansible-playbook spot.migration.probe`` through ansible-runner, with its own private data dir."""

    def __init__(self, workdir: Path, inventory: Path, console: Console, extravars: dict[str, Any] | None = None,
                 on_notice=None):
        self.workdir = workdir
        self.inventory = inventory
        self.console = console
        self.extravars = extravars or {}
        self.on_notice = on_notice
        self.results: dict[str, dict[str, Any]] = {}

    def _event(self, event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        res = dict(data.get("res") or {})
        # eviction_info's result by its shape (a notice), whatever its task is called.
        if event.get("event") == "runner_on_ok" and {"notice_id", "evicting", "checked_at"} <= set(res):
            self.results[data["host"]] = res
            if self.on_notice:
                self.on_notice(data["host"], res)
        return True

    def start(self):
        private = self.workdir / "runs" / f"probe-{time.monotonic_ns()}"
        private.mkdir(parents=True)
        bindir = str(Path(sys.executable).parent)
        env = {
            "ANSIBLE_COLLECTIONS_PATH": collections_env(),
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "false",
        }
        thread, runner = ansible_runner.run_async(
            private_data_dir=str(private), playbook="spot.migration.probe", inventory=str(self.inventory),
            extravars=self.extravars, envvars=env, quiet=True, event_handler=self._event,
            settings={"suppress_env_files": True},
        )
        return thread, runner

    def run(self) -> dict[str, dict[str, Any]]:
        thread, runner = self.start()
        thread.join()
        if runner.rc != 0:
            raise RuntimeError(f"probe playbook failed (rc {runner.rc}); see {runner.config.private_data_dir}")
        return self.results


def _table(title: str, results: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("host", "provider", "kind", "evicting", "action", "deadline", "left (s)", "notice_id / error"):
        table.add_column(column)
    for host in sorted(results):
        res = results[host]
        left = res.get("seconds_left")
        table.add_row(host, str(res.get("provider")), str(res.get("kind")),
                      "[bold red]yes[/]" if res.get("evicting") else "no", str(res.get("action") or "-"),
                      str(res.get("deadline") or "-"), "-" if left is None else f"{left:.1f}",
                      (f"[yellow]blind: {res['error'][:90]}[/]" if res.get("error") else str(res.get("notice_id") or "-")))
    return table


def run_demo(workdir: Path, console: Console | None = None) -> int:
    console = console or Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    sims: dict[str, control.SimProcess] = {}
    started = time.monotonic()
    try:
        console.rule("[bold]spot.migration demo: eviction notices from AWS, GCP and Azure")
        for cloud in CLOUDS:
            sims[cloud] = control.spawn_metadata(cloud, workdir, name=f"node-{cloud}")
            console.print(f"  metadata simulator [cyan]{cloud:5}[/] pid {sims[cloud].pid:<7} {sims[cloud].url}")
        inventory = workdir / "inventory.yml"
        inventory.write_text(yaml.safe_dump(_inventory(sims), sort_keys=False))

        console.print("\n[bold]Round 1[/]: ansible-playbook spot.migration.probe on three quiet nodes")
        console.print(_table("quiet nodes", ProbeRun(workdir, inventory, console).run()))

        console.print("\n[bold]Round 2[/]: probe with wait=30 on every node; one notice injected per cloud, 1 s apart")
        injected: dict[str, float] = {}

        def arrived(host: str, res: dict[str, Any]) -> None:
            cloud = host.split("-", 1)[1]
            after = time.time() - injected[cloud] if cloud in injected else float("nan")
            console.print(f"  [green]{time.strftime('%H:%M:%S')}[/] {host:11} reported [bold]{res.get('kind')}[/] "
                          f"evicting={res.get('evicting')} deadline={res.get('deadline')} "
                          f"({after:.2f} s after injection, waited {res.get('waited')} s)")

        run = ProbeRun(workdir, inventory, console, {"probe_wait": 30}, on_notice=arrived)
        thread, runner = run.start()
        time.sleep(2.5)  # let all three hosts start waiting
        for cloud in CLOUDS:
            time.sleep(1.0)
            injected[cloud] = time.time()
            control.inject(sims[cloud].url, NOTICE_FOR[cloud])
            console.print(f"  [magenta]{time.strftime('%H:%M:%S')}[/] injected {NOTICE_FOR[cloud]} into {cloud}")
        thread.join()
        if runner.rc != 0:
            raise RuntimeError(f"probe playbook failed (rc {runner.rc})")
        console.print(_table("notices as reported", run.results))

        console.print("\n[bold]Round 3[/]: the awkward cases - a rebalance recommendation, an Azure event for "
                      "another VM, a GCP metadata server that only answers 500")
        for sim in sims.values():
            control.inject(sim.url, "clear")
        control.inject(sims["aws"].url, "rebalance")
        control.inject(sims["azure"].url, "preempt", resources=["some-other-vm"])
        control.fault(sims["gcp"].url, "error", status=500)
        results = ProbeRun(workdir, inventory, console, {"probe_timeout": 2}).run()
        console.print(_table("not every notice is an eviction, and a broken service is never 'quiet'", results))
        ok = (results["node-aws"]["kind"] == "rebalance" and not results["node-aws"]["evicting"]
              and results["node-azure"]["kind"] == "none" and results["node-gcp"]["error"])
        console.print(f"\nDemo finished in {time.monotonic() - started:.1f} s; inventory and runner artifacts in {workdir}")
        return 0 if ok else 1
    finally:
        for sim in sims.values():
            sim.stop()
