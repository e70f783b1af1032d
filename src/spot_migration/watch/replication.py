"""Prevention: every running workload gets a pre-reserved next target (its replica node), and each new complete
checkpoint is copied there in the background (``spot.migration.replicate``), so a notice costs only the last delta
and a node lost without notice costs at most one checkpoint interval.

One round (every ``replication.interval`` seconds):

1. ask the healthy spot nodes which workloads run (``workload_info``) and, every few rounds or when a workload has
   no replica yet, the candidates' GPUs (``gpu_info``);
2. give each workload without a usable replica node one, reserving its GPUs in the controller's reservation file
   under ``replica/<workload>`` (the same file and ranking as ``migrate``), and renew the reservations held;
3. hand each workload with a replica node to its node's eviction agent, which copies every new complete checkpoint
   the moment it is written (``_follow``: the plan travels in the watcher's signed heartbeat acknowledgement, the
   agent's replicas come back in its heartbeats); where no agent that can do that is heard from, run the replicate
   playbook for the workload instead (one copy per round); record each result in the ledger.

Agents are the fast path: a playbook round costs seconds of controller time on its own, so with agents off a replica
can fall a checkpoint behind a job that checkpoints every few seconds.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import logs, module_utils

LIST_TASK = "List the workloads to replicate"
GPU_TASK = "Read the GPUs of a possible replica node"
ACCESS_TASK = "Describe how to reach the node"
AGENT_VERSION = (1, 1)
# How a node is reached by another node (rsync and ssh from the source to its replica node); set_fact runs on the
# controller, so this costs no connection.
ACCESS = {"host": "{{ ansible_host | default(inventory_hostname) }}", "port": "{{ ansible_port | default(22) }}",
          "root": "{{ spot_checkpoint_root | default('') }}", "ssh_config": "{{ spot_ssh_config | default('') }}",
          "python": "{{ ansible_python_interpreter | default('python3') }}"}
ACCESS_FACT = {"name": ACCESS_TASK, "ansible.builtin.set_fact": {"spot_replica_access": ACCESS}}
OWNER = "replica/{}"


def discovery_plays(sources: list[str], candidates: list[str]) -> list[dict]:
    plays = []
    if sources:
        plays.append({"name": "Workloads", "hosts": ",".join(sources), "gather_facts": False, "ignore_unreachable": True,
                      "tasks": [ACCESS_FACT, {"name": LIST_TASK, "spot.migration.workload_info": {
                          "workload_root": "{{ spot_workload_root | default(omit) }}"}}]})
    if candidates:
        plays.append({"name": "Capacity", "hosts": ",".join(candidates), "gather_facts": False,
                      "ignore_unreachable": True, "tasks": [
                          ACCESS_FACT, {"name": GPU_TASK, "spot.migration.gpu_info": {}, "ignore_errors": True}]})
    return plays


class Replicator:
    """The replication part of the watcher. Its dependencies, named: the watcher's ``config``, the ``ledger``, the
    ``actions`` that run plays, the inventory's ``groups``, the controller's ``reservation_file``, the ``metrics``, a
    ``log``, the ``stopping`` event and ``busy()`` (migrations in flight: a round waits for them)."""

    def __init__(self, config: Any, ledger: Any, actions: Any, groups: dict[str, list[str]], reservation_file: Any,
                 metrics: Any, log: Callable[[str], None], stopping: threading.Event, busy: Callable[[], bool]):
        self.watch_config = config
        self.config = config.replication
        self.ledger, self.actions, self.groups, self.metrics, self.log = ledger, actions, groups, metrics, log
        self.stopping, self.busy = stopping, busy
        self.placement = module_utils("_placement")
        self.reservations = str(reservation_file)
        self.capacity: dict[str, dict] = {}
        self.rounds = 0
        self.last_round: dict[str, Any] = {}
        self.access: dict[str, dict] = {}
        # node -> (last heartbeat, capabilities, version, heartbeat interval)
        self.agents: dict[str, tuple[float, list[str], str, float]] = {}
        self.agent_items: dict[str, list[dict]] = {}
        # SSH connections kept open between rounds (ControlPersist): a round every few seconds must not pay for
        # new connections each time. A short path: socket paths are limited to 108 bytes.
        self.control_dir = tempfile.mkdtemp(prefix="spot-rep-")
        # Nodes with an early warning whose workloads get a round at once (prestage), node -> notice id.
        self.urgent: dict[str, str] = {}
        self.kick = threading.Event()
        self._lock = threading.Lock()

    def prestage(self, node: str, notice_id: str) -> None:
        """``node`` is at risk (an early warning): a round at once rather than at the next interval, with a fresh
        look at what runs there and the candidates' GPUs, so each of its workloads has a reserved target and a copy
        of its newest checkpoint there before any eviction notice comes."""
        with self._lock:
            self.urgent[node] = notice_id
        self.kick.set()

    def _at_risk(self) -> set[str]:
        w = self.watch_config.warnings
        return set(self.ledger.at_risk(w.kinds, w.hold))

    # ------------------------------------------------------------------ helpers
    def _healthy_spot(self) -> list[str]:
        groups = self.groups
        lost = set(self.ledger.lost_nodes())
        evicting = set(self.ledger.evicting_nodes())
        moving = {m["source"] for m in self.ledger.migrations(open_only=True)}
        return [h for h in groups.get(self.watch_config.sweep.group, []) if h not in lost | evicting | moving]

    def _candidates(self) -> list[str]:
        lost = set(self.ledger.lost_nodes())
        evicting = set(self.ledger.evicting_nodes())
        hosts = list(dict.fromkeys(self.groups.get("standby", []) + self.groups.get(self.watch_config.sweep.group, [])))
        return [h for h in hosts if h not in lost | evicting]

    def _describe(self, host: str, res: dict) -> dict:
        standby = host in self.groups.get("standby", [])
        return {"host": host, "free_gpus": res.get("free_gpus") or [], "gpus": res.get("gpus") or [],
                "lifecycle": "on-demand" if standby else "spot", "evicting": False,
                "blind": bool(res.get("failed")), "error": res.get("msg") if res.get("failed") else None}

    # ------------------------------------------------------------------ one round
    def round_once(self) -> dict[str, Any]:
        start = time.monotonic()
        if self.busy():
            # Migrations in flight come first: a round would compete with them for the controller and the network.
            self.last_round = {"skipped": "migrations in flight", "at": time.time()}
            return self.last_round  # an urgent node stays urgent: the next round takes it
        with self._lock:
            urgent, self.urgent = dict(self.urgent), {}
        self.rounds += 1
        sources = self._healthy_spot()
        known = {w["name"]: w for w in self.ledger.workloads()}
        every = max(1, int(self.config.capacity_every))
        # Asking the nodes what runs is a run of its own: every few rounds (a new workload waits that long for its
        # first replica), at once when the last round saw a failure (a workload may have ended or moved).
        # A node at risk: what runs there and the GPUs everywhere now, not in a few rounds.
        want_scan = (self.rounds % every == 1 or every == 1 or not known or self.last_round.get("failed")
                     or bool(urgent))
        want_capacity = want_scan and (self.rounds % every == 1 or not self.capacity or bool(urgent)
                                       or any(not w["replica"] for w in known.values()))
        seen: dict[str, dict] = {}
        reached: set[str] = set()
        capacity: dict[str, dict] = {}

        def on_event(event: dict) -> None:
            data = event.get("event_data") or {}
            res = data.get("res") or {}
            if event.get("event") == "runner_on_ok" and data.get("task") == ACCESS_TASK:
                self.access[data["host"]] = (res.get("ansible_facts") or {}).get("spot_replica_access") or {}
            elif event.get("event") == "runner_on_ok" and data.get("task") == LIST_TASK:
                reached.add(data["host"])
                for item in res.get("workloads") or []:
                    if item.get("running") and (item.get("spec") or {}).get("checkpoint_dir"):
                        seen[item["name"]] = {"node": data["host"], "spec": item["spec"]}
            elif event.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("task") == GPU_TASK:
                capacity[data["host"]] = self._describe(data["host"], dict(res, failed=event["event"] == "runner_on_failed"))

        plays = discovery_plays(sources if want_scan else [], self._candidates() if want_capacity else [])
        if plays:
            rc, private = self.actions.run(f"replicate-scan-{time.monotonic_ns()}", plays, on_event=on_event,
                                             control_dir=self.control_dir)
            if rc == 0:
                shutil.rmtree(private, ignore_errors=True)
        if capacity:
            self.capacity = capacity
        # Workloads: what runs where now. A workload gone from every node it could be on releases its target.
        for name, item in seen.items():
            self.ledger.workload_seen(name, item["node"], item["spec"], len(item["spec"].get("gpus") or []))
        for name, row in known.items():
            if want_scan and name not in seen and row["node"] in reached:
                self.ledger.workload_gone(name)
                self.placement.release(self.reservations, OWNER.format(name))
        if urgent:
            self.log(f"pre-staging for {', '.join(sorted(urgent))} (at risk): "
                     f"{', '.join(sorted(n for n, i in seen.items() if i['node'] in urgent)) or 'no workloads running'}")
        plan = self._hand_to_agents(self._assign_and_plan())
        done: list[dict] = []
        if plan:
            def on_record(event: dict) -> None:
                data = event.get("event_data") or {}
                # The replicate role's record, by its fact's name (never the task's).
                record = (((data.get("res") or {}).get("ansible_facts") or {}).get("replicate_done")
                          if event.get("event") == "runner_on_ok" else None)
                if record:
                    done.append(record)

            extravars = {"replicate_plan": plan, "keep": int(self.config.keep), "bwlimit": int(self.config.bwlimit)}
            rc, private = self.actions.run(f"replicate-{time.monotonic_ns()}", "spot.migration.replicate", extravars,
                                             on_event=on_record, forks=self.watch_config.migrate.forks,
                                             control_dir=self.control_dir)
            if rc == 0:
                shutil.rmtree(private, ignore_errors=True)
        for record in done:
            self.ledger.replicated(record["workload"], record)
            outcome = "copied" if record.get("replicated") else ("failed" if record.get("error") else "current")
            self.metrics.replications.labels(outcome).inc()
            if record.get("error"):
                self.log(logs.warning(f"replication of {record['workload']} to {record['replica']} failed: {record['error'][:300]}"))
        self.metrics.set_replicas(self.ledger.workloads(), time.time())
        self.last_round = {"workloads": len(seen) if want_scan else len(known), "scanned": bool(want_scan),
                           "failed": any(r.get("error") for r in done),
                           "replicated": sum(1 for r in done if r.get("replicated")), "prestaged": sorted(urgent),
                           "seconds": round(time.monotonic() - start, 2), "at": time.time()}
        return self.last_round

    def _assign_and_plan(self) -> list[dict]:
        lost = set(self.ledger.lost_nodes())
        evicting = set(self.ledger.evicting_nodes())
        at_risk = self._at_risk()
        plan = []
        spot = set(self.groups.get(self.watch_config.sweep.group, []))
        rows = self.ledger.workloads()
        # A gang member's replica node replaces it when it is lost: never a node of another member of its gang.
        gang_nodes: dict[str, set[str]] = {}
        for row in rows:
            gang = ((row.get("spec") or {}).get("gang") or {}).get("name")
            if gang:
                gang_nodes.setdefault(gang, set()).add(row["node"])
        for row in rows:
            if row["node"] in lost | evicting or row["node"] not in spot:
                continue  # on-demand nodes are not taken away: their workloads need no replica
            owner = OWNER.format(row["name"])
            replica = row["replica"]
            peers = gang_nodes.get(((row.get("spec") or {}).get("gang") or {}).get("name") or "", set())
            if replica and (replica in lost | evicting or replica == row["node"] or replica in peers
                            or self.placement.renew(self.reservations, owner, self.config.reservation_ttl) is None):
                self.placement.release(self.reservations, owner)
                self.ledger.set_replica(row["name"], None)
                replica = None
            if not replica:
                # Never a node at risk as the next target: the same capacity wave may take it too.
                candidates = [c for h, c in self.capacity.items() if h != row["node"] and h not in at_risk]
                try:
                    got = self.placement.reserve(self.reservations, owner, candidates, gpus=row["gpus"],
                                                 exclude=[row["node"], *lost, *evicting, *at_risk, *peers],
                                                 ttl=self.config.reservation_ttl)
                except self.placement.PlacementError as exc:
                    self.log(logs.warning(f"no replica node for {row['name']}: {exc}"))
                    continue
                replica = got["target"]
                self.ledger.set_replica(row["name"], replica, got["gpus"])
                self.log(f"{row['name']}: next target and replica node {replica} (GPUs {got['gpus']}), reserved")
                row["replica_step"] = None
            plan.append({"source": row["node"], "workload": row["name"], "checkpoint_dir": row["spec"]["checkpoint_dir"],
                         "replica": replica, "last_step": row["replica_step"] if row["replica_step"] is not None else -1,
                         "link_dest": bool(row["replica_step"] is not None and not row["error"])})
        return plan

    # ------------------------------------------------------------------ agents that replicate themselves
    def _agent_follows(self, node: str) -> bool:
        seen = self.agents.get(node)
        # Heard from recently enough: within the watcher's heartbeat timeout, and never less than three of the agent's
        # own heartbeat intervals (a plan must not flap between the agent and the playbook between two heartbeats).
        if not seen or time.time() - seen[0] > max(self.watch_config.heartbeat_timeout, 3 * seen[3]) or "replicate" not in seen[1]:
            return False
        try:
            return tuple(int(x) for x in seen[2].split(".")[:2]) >= AGENT_VERSION
        except ValueError:
            return False

    def _agent_item(self, item: dict) -> dict | None:
        """The plan item as the source's agent needs it, or None when the inventory does not say enough."""
        src, dst = self.access.get(item["source"]), self.access.get(item["replica"])
        if not src or not dst or not (item.get("replica_root") or dst.get("root")):
            return None
        ssh = ["ssh", "-o", "BatchMode=yes"] + (["-F", src["ssh_config"]] if src.get("ssh_config")
                                                 else ["-p", str(dst.get("port") or 22)])
        python = dst.get("python") or "python3"
        out = {"workload": item["workload"], "replica": item["replica"], "checkpoint_dir": item["checkpoint_dir"],
               "host": dst["host"], "ssh": ssh, "python": "python3" if python.startswith("auto") else python,
               "root": item.get("replica_root") or f"{dst['root'].rstrip('/')}/.spot-replicas/{item['workload']}",
               "keep": int(self.config.keep), "bwlimit": int(self.config.bwlimit), "last_step": item["last_step"]}
        if self.config.store:
            stored = self.ledger.store_replicas().get(item["workload"]) or {}
            out.update({"store": self.config.store, "store_keep": int(self.config.store_keep or self.config.keep),
                        "store_transfers": int(self.config.store_transfers), "store_rclone": self.config.store_rclone,
                        "store_last_step": stored.get("step") if stored.get("store") == self.config.store else None})
        return out

    def _hand_to_agents(self, plan: list[dict]) -> list[dict]:
        """Give the agents that can replicate their workloads' items; return what the playbook must do."""
        by_node: dict[str, list[dict]] = {}
        rest = []
        for item in plan:
            agent_item = self._agent_item(item) if self._agent_follows(item["source"]) else None
            if agent_item is None:
                rest.append(item)
            else:
                by_node.setdefault(item["source"], []).append(agent_item)
        self.agent_items = by_node
        return rest

    def agent_plan(self, node: str) -> list[dict]:
        """What the node's agent is to replicate (the watcher's heartbeat acknowledgement carries it)."""
        return list(self.agent_items.get(node, []))

    def agent_report(self, node: str, event: dict) -> None:
        """A heartbeat from ``node``'s agent: remember whether it replicates, record the replicas it reports."""
        try:
            interval = float(event.get("heartbeat_interval") or 5.0)
        except (TypeError, ValueError):
            interval = 5.0
        self.agents[node] = (time.time(), list(event.get("capabilities") or []), str(event.get("agent_version") or ""),
                             interval)
        rows = {w["name"]: w for w in self.ledger.workloads(node=node)}
        for report in event.get("replicas") or []:
            row = rows.get(report.get("workload"))
            if not isinstance(report, dict) or row is None or row["replica"] != report.get("replica"):
                continue  # an old plan's report: the workload moved or has another replica node now
            new = report.get("step") is not None and (row["replica_step"] is None or report["step"] > row["replica_step"])
            self.ledger.replicated(row["name"], dict(report, replicated=new))
            if report.get("store"):
                self._store_report(node, row["name"], report)
            if new:
                self._copied(f"{node}>{row['replica']}", report.get("seconds"), report.get("bytes"))
            elif report.get("error") and report["error"] != row["error"]:
                self.metrics.replications.labels("failed").inc()
                self.log(logs.warning(f"replication of {row['name']} to {row['replica']} (agent) failed: {report['error'][:300]}"))
        if event.get("replicas"):
            self.metrics.set_replicas(self.ledger.workloads(), time.time())

    def _copied(self, key: str, seconds, size) -> None:
        """A new replica the agent reports: counted, and what the copy took measured as the throughput of ``key``
        (``<node>><replica node>`` or ``<node>>store``): the plan against the deadline predicts by it."""
        self.metrics.replications.labels("copied").inc()
        if isinstance(seconds, (int, float)) and isinstance(size, int) and seconds > 0 and size > 0:
            self.ledger.measure([{"kind": "throughput", "key": key, "value": size / seconds, "bytes": size,
                                  "at": time.time()}])

    def _store_report(self, node: str, name: str, report: dict) -> None:
        """The agent's word on the workload's replica in object storage: the newest step published there, or why not;
        a new one's upload is measured (the plan against the deadline predicts a restore by it)."""
        known = self.ledger.store_replicas().get(name) or {}
        step = report.get("store_step")
        new = step is not None and (known.get("step") is None or step > known["step"] or known.get("store") != report["store"])
        self.ledger.store_replicated(name, report["store"], step, report.get("store_bytes"), report.get("store_at"),
                                     report.get("store_error"))
        if new:
            self._copied(f"{node}>store", report.get("store_seconds"), report.get("store_bytes"))
        elif report.get("store_error") and report["store_error"] != known.get("error"):
            self.metrics.replications.labels("failed").inc()
            self.log(logs.warning(f"replication of {name} to {report['store']} (agent) failed: {report['store_error'][:300]}"))

    def _due(self) -> bool:
        """Wait for the next round: ``replication.interval`` seconds, or less when a warning asks for one (prestage).
        False when the watcher stops."""
        end = time.monotonic() + float(self.config.interval)
        while not self.stopping.wait(min(0.2, max(0.0, end - time.monotonic()))):
            if self.kick.is_set() or time.monotonic() >= end:
                self.kick.clear()
                return True
        return False

    def run_forever(self) -> None:
        try:
            while self._due():
                try:
                    self.round_once()
                except Exception as exc:  # noqa: BLE001 - one bad round is reported, the next one tries again
                    self.metrics.replications.labels("error").inc()
                    self.log(logs.error(f"replication round failed: {type(exc).__name__}: {exc}"))
        finally:
            shutil.rmtree(self.control_dir, ignore_errors=True)
