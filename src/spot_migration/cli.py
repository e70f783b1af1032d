"""``spot-migration``: wiring only; each command's work lives in its own module."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from . import __version__


class _Main(click.Group):
    """Every command: a missing or mismatched collection is a clear error, not a traceback."""

    def invoke(self, ctx: click.Context):
        from .collection import CollectionError

        try:
            return super().invoke(ctx)
        except CollectionError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main)
@click.version_option(__version__, prog_name="spot-migration")
def main() -> None:
    """Keep GPU jobs alive on spot / preemptible instances."""


@main.group()
def sim() -> None:
    """Simulators for what cannot run here: cloud metadata services (and, later, GPUs)."""


@sim.command("metadata")
@click.option("--cloud", type=click.Choice(["aws", "gcp", "azure"]), required=True, help="Dialect to speak.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 picks a free port.")
@click.option("--instance-id", default=None, help="Instance id to report (default: a random one in the cloud's format).")
@click.option("--name", default=None, help="VM name (Azure compute name, GCE instance name).")
@click.option("--v2-only", is_flag=True, help="AWS: refuse reads without an IMDSv2 token (HttpTokens=required).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write {url, pid} here once listening.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def sim_metadata(cloud: str, host: str, port: int, instance_id: str | None, name: str | None, v2_only: bool,
                 ready_file: Path | None, verbose: bool) -> None:
    """Serve a cloud's instance metadata service (control API under /_sim/)."""
    import os

    from .sim.metadata import MetadataServer, MetadataState

    server = MetadataServer(MetadataState(cloud, instance_id=instance_id, name=name, v2_only=v2_only),
                            host, port, verbose=verbose)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    info = {"url": server.url, "pid": os.getpid(), "cloud": cloud}
    if ready_file:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(ready_file)
    click.echo(json.dumps(info), err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


@sim.command("inject")
@click.option("--url", required=True, help="Base URL of a metadata simulator.")
@click.option("--notice", required=True,
              type=click.Choice(["spot_interruption", "preempt", "terminate", "rebalance", "maintenance", "clear"]))
@click.option("--in-seconds", type=float, default=None, help="Time until the deadline.")
@click.option("--resource", "resources", multiple=True, help="Azure: VM names the event names (default: this VM).")
def sim_inject(url: str, notice: str, in_seconds: float | None, resources: tuple[str, ...]) -> None:
    """Inject (or clear) a notice on a running metadata simulator."""
    from .sim.control import SimulatorError, inject

    try:
        click.echo(json.dumps(inject(url, notice, in_seconds=in_seconds, resources=list(resources) or None)))
    except SimulatorError as exc:
        raise click.ClickException(str(exc)) from None


@sim.command("nvidia-smi", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                             "help_option_names": []})
@click.pass_context
def sim_nvidia_smi(ctx: click.Context) -> None:
    """Answer nvidia-smi's scripted interface from $SPOT_SIM_GPU_STATE (all arguments pass through)."""
    from .sim import nvidia_smi

    sys.exit(nvidia_smi.main(list(ctx.args)))


@sim.command("gpus")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="GPU state file to write (JSON).")
@click.option("--count", type=click.IntRange(0, 64), default=2, show_default=True, help="Number of GPUs.")
@click.option("--name", default="NVIDIA H100 80GB HBM3", show_default=True, help="GPU model name.")
@click.option("--memory-mb", type=click.IntRange(1), default=81559, show_default=True, help="Memory per GPU (MiB).")
@click.option("--install-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write an nvidia-smi executable here that answers from --state.")
def sim_gpus(state_path: Path, count: int, name: str, memory_mb: int, install_dir: Path | None) -> None:
    """Create simulated GPUs: a state file and, optionally, an nvidia-smi on a PATH directory."""
    from .sim import nvidia_smi

    state_path = state_path.resolve()
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(nvidia_smi.default_state(count, name, memory_mb, seed=str(state_path)),
                                     indent=2))
    click.echo(f"wrote {count} GPU(s) to {state_path}")
    if install_dir:
        click.echo(f"installed {nvidia_smi.install(install_dir.resolve(), state_path)}")


@main.group()
def fleet() -> None:
    """The local fleet: SSH nodes on loopback addresses with simulated clouds and GPUs."""


def _fleet_call(fn, *args, **kwargs):
    from .fleet import FleetError

    try:
        return fn(*args, **kwargs)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None


@fleet.command("up")
@click.option("--nodes", type=click.IntRange(1, 200), default=4, show_default=True, help="Nodes in all.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--clouds", default="aws,gcp,azure", show_default=True, help="Dialects, rotated over the nodes.")
@click.option("--gpus", type=click.IntRange(0, 16), default=2, show_default=True, help="Simulated GPUs per node.")
@click.option("--standby", type=click.IntRange(0, 200), default=1, show_default=True,
              help="How many of the nodes are on-demand standby nodes (never get notices).")
@click.option("--base-address", default="127.0.0.10", show_default=True,
              help="Nodes get the loopback addresses after this one.")
@click.option("--no-image", is_flag=True, help="Do not build the trainer's container image (podman).")
def fleet_up(nodes: int, directory: Path, clouds: str, gpus: int, standby: int, base_address: str,
             no_image: bool) -> None:
    """Bring a fleet up and write DIR/inventory.yml."""
    from . import fleet as fleet_mod

    start = time.monotonic()
    _fleet_call(fleet_mod.up, directory, nodes, tuple(c.strip() for c in clouds.split(",") if c.strip()), gpus,
                standby, base_address, image=not no_image, log=click.echo)
    click.echo(f"ready in {time.monotonic() - start:.1f} s")


@fleet.command("down")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True)
def fleet_down(directory: Path) -> None:
    """Stop every process the fleet started (by pid)."""
    from . import fleet as fleet_mod

    _fleet_call(fleet_mod.down, directory, log=click.echo)


@fleet.command("status")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def fleet_status(directory: Path, as_json: bool) -> None:
    """One line per node: sshd, metadata simulator, notices, workloads."""
    from rich.console import Console
    from rich.table import Table

    from . import fleet as fleet_mod

    rows = _fleet_call(fleet_mod.status, directory)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"fleet in {directory}")
    for column in ("node", "cloud", "role", "ssh", "sshd", "metadata", "notices", "workloads"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["cloud"], "standby" if r["standby"] else "spot", r["ssh"],
                      "up" if r["sshd"] else "[red]down[/]", "up" if r["metadata"] else "[red]down[/]",
                      ", ".join(r["notices"]) if r["notices"] else ("-" if r["notices"] is not None else "?"),
                      ", ".join(str(p) for p in r["workload_pids"]) or "-")
    Console().print(table)


@fleet.command("inject")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--node", required=True, help="Node name (see fleet status).")
@click.option("--notice", required=True,
              type=click.Choice(["spot_interruption", "preempt", "terminate", "rebalance", "maintenance", "clear"]))
@click.option("--in-seconds", type=float, default=None, help="Time until the deadline.")
def fleet_inject(directory: Path, node: str, notice: str, in_seconds: float | None) -> None:
    """Inject (or clear) a notice on one node's metadata simulator."""
    from . import fleet as fleet_mod
    from .sim.control import SimulatorError

    try:
        click.echo(json.dumps(_fleet_call(fleet_mod.inject, directory, node, notice, in_seconds=in_seconds)))
    except SimulatorError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def image() -> None:
    """The reference trainer's container image."""


@image.command("build")
@click.option("--cli", default="podman", show_default=True, type=click.Choice(["podman", "docker"]))
@click.option("--tag", default=None, help="Image tag (default: derived from the trainer's content).")
@click.option("--force", is_flag=True, help="Rebuild even when the tag exists.")
def image_build(cli: str, tag: str | None, force: bool) -> None:
    """Build the trainer image from a local rootfs (no registry)."""
    from .image import ImageError, build_image

    try:
        click.echo(build_image(cli, tag, force=force))
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"),
              show_default=True, help="Where the demo keeps its fleet, logs, report.json and timeline.png.")
@click.option("--clouds", default="aws,gcp,azure", show_default=True,
              help="Spot nodes' clouds, in order; the first one is taken away.")
@click.option("--checkpoint-size", "checkpoint_mb", type=click.FloatRange(0, 4096), default=64.0, show_default=True,
              help="Size of the trainer's checkpoints in MiB.")
@click.option("--notice", type=click.Choice(["spot_interruption", "preempt", "terminate"]), default=None,
              help="The notice to inject (default: the cloud's own: AWS spot_interruption, GCP and Azure preempt).")
@click.option("--keep", is_flag=True, help="Leave the fleet up to explore (spot-migration status, ansible).")
@click.option("--quick", is_flag=True, help="The short form CI runs: less training before the notice.")
def demo(workdir: Path, clouds: str, checkpoint_mb: float, notice: str | None, keep: bool, quick: bool) -> None:
    """The whole story: a fleet, the agent, the watcher, a trainer; a notice; the trainer resumed elsewhere."""
    from .fleet import CLOUDS, FleetError
    from .story import DemoError, run_story

    chosen = tuple(c.strip() for c in clouds.split(",") if c.strip())
    bad = [c for c in chosen if c not in CLOUDS]
    if not chosen or bad:
        raise click.BadParameter(f"{clouds!r}: choose from {', '.join(CLOUDS)}", param_hint="--clouds")
    try:
        sys.exit(run_story(workdir, chosen, checkpoint_mb, notice, keep, quick))
    except (DemoError, FleetError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command("probe-demo")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo-probe"),
              show_default=True, help="Where it keeps its inventory and logs.")
def probe_demo(workdir: Path) -> None:
    """Three clouds' metadata simulators: probe, inject a notice into each, watch them appear."""
    from .demo import run_demo

    sys.exit(run_demo(workdir))


if __name__ == "__main__":  # pragma: no cover
    main()


# ---------------------------------------------------------------------- the watcher

def _watch_config(config_path: Path | None, **overrides):
    from .watch import config as config_mod

    try:
        return config_mod.load(config_path, **overrides)
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("watch")
@click.option("--inventory", "-i", default=None, help="Ansible inventory with the spot (and standby) nodes.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML configuration (docs/watcher.md); command-line options override it.")
@click.option("--listen", default=None, help="HOST:PORT for agent pushes, /healthz and /metrics [127.0.0.1:8787].")
@click.option("--state-dir", default=None, help="Ledger, run directories and records [~/.local/state/spot-migration].")
@click.option("--controller-url", default=None,
              help="Run migrations as AWX / Automation Controller jobs (the migrate job template) at this URL; the "
                   "token comes from controller.token_file or $SPOT_MIGRATION_CONTROLLER_TOKEN.")
@click.option("--job-template", default=None, help="Name or id of the migrate job template [spot-migration migrate].")
@click.option("--crash-at", default=None, hidden=True, help="Fault injection for tests: SIGKILL itself on entering STATE.")
def watch_cmd(inventory: str | None, config_path: Path | None, listen: str | None, state_dir: str | None,
              controller_url: str | None, job_template: str | None, crash_at: str | None) -> None:
    """Receive agent pushes, sweep silent nodes, run migrations, keep the ledger. The HMAC secret comes from
    secret_file in the config or $SPOT_MIGRATION_SECRET, never from the command line."""
    from .watch.app import Watcher
    from .watch.config import ConfigError

    controller = {k: v for k, v in (("url", controller_url), ("job_template", job_template)) if v is not None}
    config = _watch_config(config_path, inventory=inventory, listen=listen, state_dir=state_dir, controller=controller)
    try:
        watcher = Watcher(config, crash_at=crash_at)
    except (ConfigError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stop.append("SIGINT"))
    watcher.start()
    while not stop:
        time.sleep(0.2)
    watcher.log(f"{stop[0]}: finishing the migrations in flight, then stopping")
    watcher.stop()


@main.command("status")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--inventory", "-i", default=None, help="Also ask the nodes which workloads run where.")
@click.option("--state-dir", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(config_path: Path | None, inventory: str | None, state_dir: str | None, as_json: bool) -> None:
    """Nodes (last heartbeat, blind or not), workloads and where they run, migrations in flight."""
    from rich.console import Console

    from .watch import actions as actions_mod
    from .watch import views
    from .watch.app import inventory_groups
    from .watch.ledger import Ledger

    config = _watch_config(config_path, inventory=inventory, state_dir=state_dir)
    if not config.ledger_path.exists():
        raise click.ClickException(f"no ledger at {config.ledger_path}; is the watcher running with this state dir?")
    ledger = Ledger(config.ledger_path)
    spot, workloads = [], None
    if config.inventory:
        groups = inventory_groups(config.inventory)
        spot = groups.get(config.sweep.group, [])
        hosts = sorted(set(spot) | set(groups.get("standby", [])))
        acts = actions_mod.Actions(config.inventory, Path(config.state_dir) / "runs", log=lambda *_: None)
        workloads = actions_mod.locate(acts, f"status-{time.monotonic_ns()}", hosts)
    data = views.status_data(ledger, spot, config.heartbeat_timeout, workloads, config.warnings)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    views.render_status(data, Console(highlight=False))


@main.command("history")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--state-dir", default=None)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the migrations, their steps and notices as JSON.")
def history_cmd(config_path: Path | None, state_dir: str | None, limit: int, as_json: bool) -> None:
    """Past and current migrations from the ledger, newest first."""
    from rich.console import Console

    from .watch import views
    from .watch.ledger import Ledger

    config = _watch_config(config_path, state_dir=state_dir)
    if not config.ledger_path.exists():
        raise click.ClickException(f"no ledger at {config.ledger_path}")
    ledger = Ledger(config.ledger_path)
    rows = ledger.migrations(limit=limit)
    for row in rows:
        row["plan"] = ledger.plan(row["id"])
    if as_json:
        for row in rows:
            row["transitions"] = ledger.transitions(row["id"])
        click.echo(json.dumps({"migrations": rows, "notices": ledger.notices(limit)}, indent=2, default=str))
        return
    views.render_migrations(rows, Console(highlight=False), "Migrations")
