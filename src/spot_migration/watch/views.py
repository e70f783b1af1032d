"""``spot-migration status`` and ``history``: the ledger (and, for status, the nodes) as readable tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from .ledger import Ledger


def _age(epoch: float | None, now: float) -> str:
    if not epoch:
        return "never"
    seconds = now - epoch
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z" if epoch else "-"


def status_data(ledger: Ledger, spot_hosts: list[str], heartbeat_timeout: float,
                workloads: dict[str, dict[str, bool] | None] | None = None) -> dict[str, Any]:
    now = time.time()
    known = {n["node"]: n for n in ledger.nodes()}
    nodes = []
    for host in sorted(set(spot_hosts) | set(known)):
        row = known.get(host, {})
        agent_fresh = bool(row.get("last_heartbeat_at")) and now - row["last_heartbeat_at"] <= heartbeat_timeout
        nodes.append({"node": host, "last_heartbeat_at": row.get("last_heartbeat_at"),
                      "last_probe_at": row.get("last_probe_at"), "agent": "ok" if agent_fresh else
                      ("silent" if row.get("last_heartbeat_at") else "none"),
                      "blind": bool(row.get("blind")), "blind_since": row.get("blind_since"), "error": row.get("error")})
    return {"nodes": nodes, "in_flight": ledger.migrations(open_only=True), "workloads": workloads}


def render_status(data: dict[str, Any], console: Console) -> None:
    now = time.time()
    table = Table(title="Nodes", title_justify="left")
    for column in ("node", "agent", "last heartbeat", "last sweep probe", "metadata", "error"):
        table.add_column(column)
    for n in data["nodes"]:
        table.add_row(n["node"], {"ok": "[green]ok[/]", "silent": "[yellow]silent[/]"}.get(n["agent"], "none"),
                      _age(n["last_heartbeat_at"], now), _age(n["last_probe_at"], now),
                      f"[red]blind {_age(n['blind_since'], now)}[/]" if n["blind"] else "readable",
                      (n["error"] or "")[:80])
    console.print(table)
    if data.get("workloads") is not None:
        table = Table(title="Workloads", title_justify="left")
        table.add_column("workload")
        table.add_column("running on")
        table.add_column("stopped on")
        names: dict[str, dict[str, list[str]]] = {}
        for host, found in sorted(data["workloads"].items()):
            for name, running in (found or {}).items():
                names.setdefault(name, {"running": [], "stopped": []})["running" if running else "stopped"].append(host)
        for name, where in sorted(names.items()):
            table.add_row(name, ", ".join(where["running"]) or "[red]nowhere[/]", ", ".join(where["stopped"]) or "-")
        unreachable = [h for h, found in data["workloads"].items() if found is None]
        if unreachable:
            table.caption = f"unreachable: {', '.join(sorted(unreachable))}"
        console.print(table)
    render_migrations(data["in_flight"], console, "Migrations in flight")


def render_migrations(rows: list[dict], console: Console, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("migration", "source", "state", "workloads -> target", "noticed", "took", "error"):
        table.add_column(column)
    for m in rows:
        moved = ", ".join(f"{w} -> {m['targets'].get(w, '?')}" for w in m["workloads"]) or "-"
        took = f"{m['finished_at'] - m['notice_at']:.1f} s" if m.get("finished_at") and m.get("notice_at") else "-"
        colour = {"running": "green", "failed": "red"}.get(m["state"], "yellow")
        table.add_row(m["id"], m["source"], f"[{colour}]{m['state']}[/]", moved, _when(m.get("notice_at")), took,
                      (m.get("error") or "")[:80])
    if not rows:
        table.caption = "none"
    console.print(table)
