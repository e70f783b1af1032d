"""The local fleet: real sshd per node, own simulators and GPUs, node-to-node rsync with host keys
checked, and nothing left behind by down."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from urllib.parse import urlsplit

import pytest

from spot_migration import fleet as fleet_mod
from tests.fleet.conftest import worker_base


def _listening_ports() -> set[tuple[str, int]]:
    """(IPv4 address, port) of every listening TCP socket. By address, not port alone: fleets of the other pytest
    worker listen on the same port numbers on their own loopback addresses."""
    ports = set()
    with open("/proc/net/tcp") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                ports.add((socket.inet_ntoa(struct.pack("<I", int(address, 16))), int(port, 16)))
    return ports


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_up_and_down_ten_times_leaves_nothing(tmp_path):
    for round_ in range(10):
        directory = tmp_path / f"fleet-{round_}"
        fleet = fleet_mod.up(directory, nodes=3, standby=1, base_address=worker_base(100), image=False,
                             log=lambda *_: None)
        pids = [p for n in fleet.nodes for p in (n.sshd_pid, n.metadata_pid)]
        ports = {(n.address, n.port) for n in fleet.nodes} | {
            (urlsplit(n.metadata_url).hostname, urlsplit(n.metadata_url).port) for n in fleet.nodes}
        assert all(_alive(p) for p in pids)
        assert ports <= _listening_ports()
        stopped = fleet_mod.down(directory, log=lambda *_: None)
        assert sorted(stopped) == sorted(pids)
        assert not any(_alive(p) for p in pids), f"round {round_}: a fleet process survived down"
        assert not ports & _listening_ports(), f"round {round_}: a fleet port is still listening"


def test_up_refuses_a_running_fleet_and_recovers_a_dead_one(tmp_path):
    directory = tmp_path / "fleet"
    fleet = fleet_mod.up(directory, nodes=1, standby=0, base_address=worker_base(120), image=False,
                         log=lambda *_: None)
    try:
        with pytest.raises(fleet_mod.FleetError, match="already running"):
            fleet_mod.up(directory, nodes=1, standby=0, base_address=worker_base(120), image=False,
                         log=lambda *_: None)
        for node in fleet.nodes:  # the machine "rebooted": every process gone, state left behind
            fleet_mod._stop_pid(node.sshd_pid)
            fleet_mod._stop_pid(node.metadata_pid)
        messages = []
        again = fleet_mod.up(directory, nodes=1, standby=0, base_address=worker_base(120), image=False,
                             log=messages.append)
        assert "recovering" in messages[0]
        assert again.fleet_id != fleet.fleet_id and _alive(again.nodes[0].sshd_pid)
    finally:
        fleet_mod.down(directory, log=lambda *_: None)


def test_status_and_bad_requests(fleet):
    rows = fleet_mod.status(fleet.dir)
    assert [r["name"] for r in rows] == ["node1", "node2", "node3", "standby1"]
    assert all(r["sshd"] and r["metadata"] for r in rows)
    with pytest.raises(fleet_mod.FleetError, match="standby nodes never get notices"):
        fleet_mod.inject(fleet.dir, "standby1", "preempt")
    with pytest.raises(fleet_mod.FleetError, match="no node 'node9'"):
        fleet_mod.inject(fleet.dir, "node9", "preempt")


def test_inventory_groups_and_vars(inventory):
    groups = inventory["all"]["children"]
    assert sorted(groups["spot"]["hosts"]) == ["node1", "node2", "node3"]
    assert sorted(groups["standby"]["hosts"]) == ["standby1"]
    node1 = groups["spot"]["hosts"]["node1"]
    assert node1["spot_provider"] == "aws" and groups["spot"]["hosts"]["node2"]["spot_provider"] == "gcp"
    assert node1["spot_checkpoint_root"].endswith("/nodes/node1/checkpoints")
    assert "StrictHostKeyChecking=yes" in inventory["all"]["vars"]["ansible_ssh_common_args"]


def test_each_node_is_its_own(fleet, fleet_play, tmp_path):
    out = tmp_path / "facts.json"
    fleet_play({"hosts": "all", "gather_facts": False, "tasks": [
        {"ansible.builtin.command": {"argv": ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"]},
         "register": "smi", "changed_when": False},
        {"ansible.builtin.command": {"argv": ["sh", "-c", "echo $SPOT_NODE; echo $SSH_CONNECTION"]},
         "register": "who", "changed_when": False},
        {"spot.migration.eviction_info": {"provider": "{{ spot_provider }}", "metadata_url": "{{ spot_metadata_url }}"},
         "register": "notice"},
        {"ansible.builtin.set_fact": {"summary": {"uuids": "{{ smi.stdout_lines }}", "who": "{{ who.stdout_lines }}",
                                                  "instance": "{{ notice.instance_id }}"}}},
        {"ansible.builtin.copy": {"dest": str(out), "content": "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | "
                                  "map('extract', hostvars) | map(attribute='summary'))) | to_json }}"},
         "run_once": True, "delegate_to": "localhost", "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"}},
    ]})
    facts = json.loads(out.read_text())
    assert [facts[n]["who"][0] for n in ("node1", "node2", "node3", "standby1")] == ["node1", "node2", "node3", "standby1"]
    for name, node in ((n.name, n) for n in fleet.nodes):
        assert facts[name]["who"][1].split()[2] == node.address  # logged in through the node's own sshd
    uuids = [u for n in facts.values() for u in n["uuids"]]
    assert len(uuids) == 8 and len(set(uuids)) == 8, "every node has its own GPUs"
    assert len({n["instance"] for n in facts.values()}) == 4, "every node has its own metadata service"


def test_inject_reaches_only_that_node(fleet, fleet_play):
    fleet_mod.inject(fleet.dir, "node3", "preempt")
    try:
        result = fleet_play({"hosts": "spot", "gather_facts": False, "tasks": [
            {"spot.migration.eviction_info": {"provider": "{{ spot_provider }}",
                                              "metadata_url": "{{ spot_metadata_url }}"}, "register": "n"},
            {"ansible.builtin.assert": {"that": ["n.evicting == (inventory_hostname == 'node3')"]}},
        ]})
        assert "failed=0" in result.stdout
    finally:
        fleet_mod.inject(fleet.dir, "node3", "clear")


def test_rsync_between_nodes_with_host_keys_checked(fleet, fleet_play):
    node1, node2 = fleet.node("node1"), fleet.node("node2")
    payload = os.path.join(node1.paths["checkpoints"], "payload.bin")
    target = os.path.join(node2.paths["checkpoints"], "from-node1")
    fleet_play([
        {"ansible.builtin.command": {"argv": ["dd", "if=/dev/urandom", f"of={payload}", "bs=1M", "count=3"]}},
        {"ansible.builtin.command": {"argv": ["rsync", "-a", "-e", "ssh -F {{ spot_ssh_config }}", payload,
                                              f"node2:{target}/"]}},
    ])
    assert os.path.getsize(os.path.join(target, "payload.bin")) == 3 * 1024 * 1024
    # A host key that does not match must stop the copy: host key checking is on.
    bad = os.path.join(node1.root, "ssh", "bad_known_hosts")
    with open(fleet.keys["known_hosts"]) as handle:
        lines = [line for line in handle if f"[{node2.address}]" not in line]
    other_key = open(os.path.join(node1.paths["ssh"], "ssh_host_ed25519_key.pub")).read().split()
    lines.append(f"[{node2.address}]:{node2.port} {other_key[0]} {other_key[1]}\n")
    with open(bad, "w") as handle:
        handle.writelines(lines)
    result = subprocess.run(["ssh", "-F", node1.paths["ssh_config"], "-o", f"UserKnownHostsFile={bad}", "node2", "true"],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
