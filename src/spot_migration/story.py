"""``make demo``: the whole story on one machine. A local fleet (AWS-, GCP- and Azure-dialect spot nodes and an
on-demand standby, simulated GPUs), the eviction agent on the spot nodes, the watcher, the reference trainer on
a spot node; then a notice, and each phase as it happens, until the trainer runs again on another node from the
verified checkpoint. Writes ``<dir>/report.json`` and ``<dir>/timeline.png``, then tears everything down.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import fleet as fleet_mod
from .logs import Log
from .watch import config as config_mod
from .watch.actions import Actions
from .watch.app import Watcher, iso, to_epoch

NOTICES = {"aws": "spot_interruption", "gcp": "preempt", "azure": "preempt"}
# (phase, what it means) in the order a migration goes through them.
PHASES = [
    ("notice", "the cloud shows the notice"),
    ("detected", "the agent on the node sees it"),
    ("checkpoint signalled", "the agent asks the trainer to checkpoint"),
    ("watcher has it", "the signed push is in the ledger"),
    ("target chosen", "GPUs reserved on a target"),
    ("checkpoint verified", "trainer stopped, newest complete checkpoint sealed"),
    ("bytes moved", "checkpoint copied and verified on the target"),
    ("resumed", "trainer started on the target from it"),
    ("first new step", "trainer wrote a new checkpoint on the target"),
]


class DemoError(RuntimeError):
    """The demo could not run; the message says where it stopped."""


@dataclass
class Story:
    t0: float = 0.0
    at: dict[str, float] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)

    def mark(self, phase: str, when: float | None, detail: str = "") -> None:
        if when is not None and phase not in self.at:
            self.at[phase] = when
        if phase in self.at and detail and not self.detail.get(phase):
            self.detail[phase] = detail

    def table(self, title: str = "") -> Table:
        table = Table(title=title or None, title_justify="left")
        for column in ("phase", "after the notice", "", "what"):
            table.add_column(column)
        for phase, meaning in PHASES:
            if phase in self.at:
                table.add_row(f"[green]✓[/] {phase}", f"{self.at[phase] - self.t0:7.2f} s", self.detail.get(phase, ""),
                              meaning)
            else:
                table.add_row(f"[yellow]…[/] {phase}", "", "", meaning)
        return table


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _play(actions: Actions, name: str, play: dict, extravars: dict | None = None) -> None:
    rc, private = actions.run(name, [play], extravars)
    if rc != 0:
        out = "".join(p.read_text() for p in private.glob("artifacts/*/stdout"))
        raise DemoError(f"{name} failed (rc {rc}): {out[-2000:]}")


def _timeline_png(story: Story, path: Path) -> bool:
    """The demo's timeline as a PNG; False when matplotlib (the ``demo`` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p, _ in PHASES if p in story.at]
    starts, widths, previous = [], [], 0.0
    for phase in phases:
        end = story.at[phase] - story.t0
        starts.append(previous)
        widths.append(max(end - previous, 0.02))
        previous = max(previous, end)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(phases) + 1.2))
    ax.barh(range(len(phases)), widths, left=starts, color="#3b7dd8")
    for index, (start, width) in enumerate(zip(starts, widths)):
        ax.text(start + width + 0.1, index, f"{start + width:.2f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(phases)), phases)
    ax.invert_yaxis()
    ax.set_xlabel("seconds after the notice")
    ax.set_title("spot.migration: one eviction, phase by phase")
    ax.set_xlim(0, previous * 1.18 + 0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_story(workdir: Path, clouds: tuple[str, ...] = ("aws", "gcp", "azure"), checkpoint_mb: float = 64.0,
              notice: str | None = None, keep: bool = False, quick: bool = False, console: Console | None = None) -> int:
    console = console or Console(highlight=False)
    workdir = workdir.resolve()
    if workdir.exists():
        fleet_file = workdir / "fleet" / "fleet.json"
        if fleet_file.exists():
            fleet_mod.down(workdir / "fleet", log=lambda *_: None)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    fleet = watcher = None
    try:
        console.rule("[bold]spot.migration: a spot node is taken away, the training job carries on")
        fleet = fleet_mod.up(workdir / "fleet", nodes=len(clouds) + 1, clouds=clouds, standby=1, image=False,
                             base_address="127.0.90.10", log=lambda *_: None)
        for node in fleet.nodes:
            kind = "on-demand standby" if node.standby else f"{node.cloud} spot"
            console.print(f"  {node.name:9} {kind:18} sshd {node.address}:{node.port}  {node.gpus} simulated GPUs")
        source = next(n for n in fleet.nodes if not n.standby)
        secret = secrets.token_hex(32)
        secret_file = workdir / "secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        port = _free_port()
        console.print("  installing the eviction agent on the spot nodes (role spot.migration.eviction_agent) …")
        actions = Actions(str(fleet.inventory_path), workdir / "runs", log=lambda *_: None)
        _play(actions, "agents", {"hosts": "spot", "gather_facts": False, "roles": [{
            "role": "spot.migration.eviction_agent", "eviction_agent_watcher_url": f"http://127.0.0.1:{port}",
            "eviction_agent_secret": "{{ lookup('ansible.builtin.file', agent_secret_file) }}",
            "eviction_agent_runtimes": ["process"]}]}, {"agent_secret_file": str(secret_file)})
        config = config_mod.load(None, inventory=str(fleet.inventory_path), listen=f"127.0.0.1:{port}",
                                 state_dir=str(workdir / "watcher"), secret_file=str(secret_file))
        config.replication.enabled = False  # the story is the notice path; replication has its own test and bench
        log_file = open(workdir / "watcher.log", "a")  # noqa: SIM115 - closed in finally
        watcher = Watcher(config, log=Log(fmt=config.log_format, level=config.log_level, stream=log_file))
        watcher.start()
        console.print(f"  watcher on {watcher.server.url} (ledger {config.ledger_path})")
        name = "llm-finetune"
        ckpt = os.path.join(source.paths["checkpoints"], name)
        progress = os.path.join(ckpt, "progress.json")
        console.print(f"  starting the reference trainer on {source.name} ({checkpoint_mb:g} MiB checkpoints) …")
        _play(actions, "deploy", {"hosts": source.name, "gather_facts": False, "tasks": [
            {"name": "Start the trainer", "spot.migration.workload": {
                "name": name, "runtime": "process", "gpus": 1, "checkpoint_dir": ckpt,
                "command": ["{{ ansible_python_interpreter }}", "{{ spot_trainer }}"],
                "args": ["--checkpoint-dir", ckpt, "--step-time", "0.02", "--every", "100", "--size-mb",
                         str(checkpoint_mb), "--progress", progress, "--initial-checkpoint"],
                "workload_root": "{{ spot_workload_root }}"}},
            {"name": "Wait for its first checkpoint", "spot.migration.checkpoint_info": {
                "path": ckpt, "wait_timeout": 60}}]})
        time.sleep(1.0 if quick else 4.0)
        step = json.loads(Path(progress).read_text()).get("step")
        console.print(f"  training: step {step} on {source.name}\n")

        kind = notice or NOTICES[source.cloud]
        story = Story(t0=time.time())
        fleet_mod.inject(fleet.dir, source.name, kind)
        story.mark("notice", story.t0, f"{source.cloud} {kind} on {source.name}")
        deadline = time.time() + 240
        migration = None
        with Live(story.table(), console=console, refresh_per_second=8) as live:
            while time.time() < deadline:
                _observe(story, source, watcher)
                rows = watcher.ledger.migrations()
                migration = rows[0] if rows else None
                live.update(story.table(f"{time.time() - story.t0:6.1f} s since the notice"))
                if migration and migration["state"] in ("running", "failed") and (
                        "first new step" in story.at or migration["state"] == "failed"):
                    break
                time.sleep(0.1)
        if migration is None or migration["state"] != "running":
            raise DemoError(f"the migration did not finish: {migration and migration['state']}: "
                            f"{migration and migration.get('error')}; see {workdir / 'watcher.log'}")
        report = _report(story, migration, fleet, name)
        (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        plotted = _timeline_png(story, workdir / "timeline.png")
        row = report["migrations"][0]
        summary = Table(title="Summary", title_justify="left", show_header=False)
        summary.add_column()
        summary.add_column()
        for label, value in (("workload", row["workload"]), ("moved", f"{row['source']} ({row['provider']}) -> "
                                                                       f"{row['target']}"),
                             ("checkpoint", f"step {row['checkpoint_step']}, {row['bytes'] / 2**20:.1f} MiB, sha256 "
                                            f"verified on both ends"),
                             ("resumed from step", str(row["resumed_step"])),
                             ("notice -> agent signal", _after(story, "checkpoint signalled")),
                             ("notice -> running again", _after(story, "resumed")),
                             ("notice -> first new step", _after(story, "first new step")),
                             ("copies running", "1 (the source copy was stopped before the target copy started)")):
            summary.add_row(label, value)
        console.print(summary)
        console.print(f"  report: {workdir / 'report.json'}   timeline: " + (
            str(workdir / "timeline.png") if plotted else "not drawn (pip install 'spot-migration[demo]' for the plot)"))
        if keep:
            console.print(f"\n  the fleet is still up: spot-migration status --state-dir {config.state_dir} -i "
                          f"{fleet.inventory_path}\n  take it down with: spot-migration fleet down --dir {fleet.dir}")
        console.print(f"\nDemo finished in {time.monotonic() - started:.0f} s.")
        return 0
    finally:
        if watcher is not None:
            watcher.stop(wait=60)
        if fleet is not None and not keep:
            fleet_mod.down(fleet.dir, log=lambda *_: None)


def _after(story: Story, phase: str) -> str:
    return f"{story.at[phase] - story.t0:.2f} s" if phase in story.at else "not seen"


def _observe(story: Story, source, watcher: Watcher) -> None:
    """Fill in the phases from what the agent, the ledger and the trainer wrote."""
    state = Path(source.paths["state"]) / "eviction-agent" / "state" / "state.json"
    try:
        entries = [e for e in json.loads(state.read_text())["notices"].values() if e["detected_epoch"] >= story.t0 - 1]
    except (OSError, ValueError, KeyError):
        entries = []
    if entries:
        story.mark("detected", entries[0]["detected_epoch"], entries[0]["notice"]["notice_id"])
        story.mark("checkpoint signalled", entries[0].get("signalled_epoch"),
                   ", ".join(f"{s['name']} {s.get('how', '')}" for s in entries[0]["signalled"]))
    notices = watcher.ledger.notices(5)
    if notices:
        story.mark("watcher has it", notices[0]["detected_at"], f"via {notices[0]['first_via']}")
    rows = watcher.ledger.migrations(1)
    if not rows:
        return
    m = rows[0]
    times = {t["state"]: t["at"] for t in watcher.ledger.transitions(m["id"])}
    story.mark("target chosen", times.get("target_reserved"), ", ".join(m["targets"].values()))
    story.mark("checkpoint verified", times.get("transferring"),
               f"step {next(iter(m['steps'].values()))}" if m["steps"] else "")
    story.mark("bytes moved", times.get("verified"))
    story.mark("resumed", times.get("resuming"))
    rows = (m.get("record") or {}).get("migrations") or []
    if m["state"] == "running" and rows:
        r = rows[0]
        story.mark("bytes moved", to_epoch(r.get("transferred_at")), f"{(r.get('bytes') or 0) / 2**20:.1f} MiB")
        story.mark("resumed", to_epoch(r.get("started_on_target_at")), f"on {r['target']} from step {r['checkpoint_step']}")
        story.mark("first new step", r.get("first_new_checkpoint_at") or times.get("running"),
                   f"step {r.get('first_new_step')}")


def _report(story: Story, migration: dict, fleet, name: str) -> dict[str, Any]:
    record = (migration.get("record") or {}).get("migrations") or [{}]
    row = next((r for r in record if r.get("workload") == name), record[0])
    target = migration["targets"][name]
    progress = json.loads((Path(fleet.node(target).paths["checkpoints"]) / name / "progress.json").read_text())
    return {"migrations": [{
        "workload": name, "source": migration["source"], "target": target,
        "provider": row.get("provider"),
        "notice_at": iso(story.t0), "detected_at": iso(story.at.get("detected")),
        "checkpoint_signalled_at": iso(story.at.get("checkpoint signalled")),
        "checkpoint_verified_at": row.get("checkpoint_verified_at"),
        "target_chosen_at": row.get("target_chosen_at"),
        "transferred_at": row.get("transferred_at"),
        "verified_on_target_at": row.get("verified_on_target_at"),
        "resumed_at": row.get("resumed_at"),
        "checkpoint_step": row.get("checkpoint_step"),
        "resumed_step": progress.get("resumed_from"),
        "first_new_step": progress.get("step"),
        "bytes": row.get("bytes"),
        "detection_s": round(story.at["detected"] - story.t0, 3) if "detected" in story.at else None,
        "notice_to_running_s": round(story.at["resumed"] - story.t0, 3) if "resumed" in story.at else None,
        "migration_id": migration["id"],
    }], "phases": {p: round(story.at[p] - story.t0, 3) for p, _ in PHASES if p in story.at}}
