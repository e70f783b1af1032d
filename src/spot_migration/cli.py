"""``spot-migration``: wiring only; each command's work lives in its own module."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from . import __version__


@click.group()
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


@main.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"),
              show_default=True, help="Where the demo keeps its inventory and logs.")
def demo(workdir: Path) -> None:
    """Three clouds, three nodes: probe, inject a notice into each, watch them appear."""
    from .demo import run_demo

    sys.exit(run_demo(workdir))


if __name__ == "__main__":  # pragma: no cover
    main()
