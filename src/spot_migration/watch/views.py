"""``spot-migration status`` and ``history``: the ledger (and, for status, the nodes) as readable tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from .ledger import Ledger
from .metrics import replica_lag


def _age(epoch: float | None, now: float) -> str:
    if not epoch:
        return "never"
    seconds = now - epoch
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z" if epoch else "-"


def status_data(ledger: Ledger, spot_hosts: list[str], heartbeat_timeout: float,
                workloads: dict[str, dict[str, bool] | None] | None = None, warnings: Any = None) -> dict[str, Any]:
    """What ``status`` shows; ``warnings``: the watcher's ``warnings`` settings (which notices make a node at risk,
    and for how long)."""
    now = time.time()
    known = {n["node"]: n for n in ledger.nodes()}
    at_risk = ledger.at_risk(warnings.kinds, warnings.hold) if warnings is not None else {}
    nodes = []
    health = ledger.health()
    for host in sorted(set(spot_hosts) | set(known)):
        row = known.get(host, {})
        agent_fresh = bool(row.get("last_heartbeat_at")) and now - row["last_heartbeat_at"] <= heartbeat_timeout
        nodes.append({"node": host, "last_heartbeat_at": row.get("last_heartbeat_at"),
                      "last_probe_at": row.get("last_probe_at"), "agent": "ok" if agent_fresh else
                      ("silent" if row.get("last_heartbeat_at") else "none"),
                      "blind": bool(row.get("blind")), "blind_since": row.get("blind_since"), "error": row.get("error"),
                      "lost_at": (health.get(host) or {}).get("lost_at"),
                      "unreachable_since": (health.get(host) or {}).get("unreachable_since"),
                      "at_risk": at_risk.get(host)})
    replicas = []
    for w in ledger.workloads():
        lag_steps, lag_seconds = replica_lag(w, now)
        replicas.append({"workload": w["name"], "node": w["node"], "replica": w["replica"], "step": w["replica_step"],
                         "source_step": w["source_step"], "lag_steps": lag_steps, "lag_seconds": lag_seconds,
                         "replicated_at": w["replicated_at"], "bytes": w["replica_bytes"], "error": w["error"]})
    return {"nodes": nodes, "in_flight": ledger.migrations(open_only=True), "workloads": workloads,
            "replicas": replicas, "fences": ledger.fences(), "gangs": gangs(ledger.workloads())}


def gangs(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Jobs over several nodes as units: ``{gang: {size, generation, master, members: {rank: {workload, node}}}}``
    from the ledger's workloads whose spec names a gang (the newest generation a member runs wins)."""
    out: dict[str, dict[str, Any]] = {}
    for w in rows:
        g = (w.get("spec") or {}).get("gang") or {}
        if not g.get("name"):
            continue
        unit = out.setdefault(g["name"], {"size": g.get("size"), "generation": -1, "master": None, "members": {}})
        unit["members"][int(g.get("rank", 0))] = {"workload": w["name"], "node": w["node"]}
        if int(g.get("generation") or 0) > unit["generation"]:
            unit.update(generation=int(g.get("generation") or 0), master=f"{g.get('master_addr')}:{g.get('master_port')}",
                        size=g.get("size"))
    return out


def render_status(data: dict[str, Any], console: Console) -> None:
    now = time.time()
    table = Table(title="Nodes", title_justify="left")
    for column in ("node", "agent", "last heartbeat", "last sweep probe", "metadata", "error"):
        table.add_column(column)
    for n in data["nodes"]:
        state = {"ok": "[green]ok[/]", "silent": "[yellow]silent[/]"}.get(n["agent"], "none")
        if n.get("lost_at"):
            state = f"[red]LOST {_age(n['lost_at'], now)}[/]"
        elif n.get("unreachable_since"):
            state += f" [yellow](unreachable {_age(n['unreachable_since'], now)})[/]"
        if n.get("at_risk") and not n.get("lost_at"):
            state += f" [yellow]AT RISK ({n['at_risk']['kind']} {_age(n['at_risk']['since'], now)})[/]"
        table.add_row(n["node"], state,
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
    if data.get("gangs"):
        table = Table(title="Jobs over several nodes (gangs)", title_justify="left")
        for column in ("gang", "members (rank: node)", "master", "generation"):
            table.add_column(column)
        for name, unit in sorted(data["gangs"].items()):
            members = ", ".join(f"{r}: {m['node']}" for r, m in sorted(unit["members"].items()))
            if unit["size"] and len(unit["members"]) < int(unit["size"]):
                members += f" [yellow]({len(unit['members'])} of {unit['size']} known)[/]"
            table.add_row(name, members, unit["master"] or "-", str(unit["generation"]))
        console.print(table)
    if data.get("replicas"):
        table = Table(title="Replicas (next target, pre-reserved)", title_justify="left")
        for column in ("workload", "runs on", "replica on", "replicated step", "newest step", "lag", "replicated",
                       "error"):
            table.add_column(column)
        for r in data["replicas"]:
            lag = "-" if r["lag_steps"] is None else f"{r['lag_steps']} steps, {r['lag_seconds'] or 0:.0f} s"
            table.add_row(r["workload"], r["node"], r["replica"] or "[yellow]none yet[/]",
                          "-" if r["step"] is None else str(r["step"]),
                          "-" if r["source_step"] is None else str(r["source_step"]), lag,
                          _age(r["replicated_at"], now), (r["error"] or "")[:60])
        console.print(table)
    render_migrations(data["in_flight"], console, "Migrations in flight")


def plan_lines(plan: dict | None) -> list[str]:
    """The plan against the deadline in a few words per workload: the ways with their predictions, the choice and
    what actually happened."""
    if not plan:
        return []
    out = []
    for name, p in sorted((plan.get("workloads") or {}).items()):
        ways = ", ".join(f"{o['from']} {o['predicted_s']:.1f} s" if o.get("predicted_s") is not None else f"{o['from']} ?"
                         for o in p.get("options") or [])
        actual = p.get("actual") or {}
        did = (f"; ran {actual['from']}" + (f" (fell back: {actual['fell_back'][:60]})" if actual.get("fell_back") else "")
               + (f", running after {actual['running_after_s']:.1f} s" if actual.get("running_after_s") is not None
                  else "")) if actual else ""
        out.append(f"{name}: window {p.get('window_s')} s; {ways}; chose {p['choice']}{did}")
    return out


def render_migrations(rows: list[dict], console: Console, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("migration", "source", "state", "workloads -> target", "noticed", "took", "plan", "error"):
        table.add_column(column)
    for m in rows:
        moved = ", ".join(f"{w} -> {m['targets'].get(w, '?')}" for w in m["workloads"]) or "-"
        took = f"{m['finished_at'] - m['notice_at']:.1f} s" if m.get("finished_at") and m.get("notice_at") else "-"
        colour = {"running": "green", "failed": "red"}.get(m["state"], "yellow")
        table.add_row(m["id"], m["source"], f"[{colour}]{m['state']}[/]", moved, _when(m.get("notice_at")), took,
                      "\n".join(plan_lines(m.get("plan"))) or "-", (m.get("error") or "")[:80])
    if not rows:
        table.caption = "none"
    console.print(table)
