"""The local fleet: N SSH nodes on one machine, each with its own sshd on its own loopback address,
its own directory tree, its own metadata simulator and its own simulated GPUs.

Used by the demo and the tests, and by people who want to rehearse spot.migration without a cloud.
Every process the fleet starts is recorded by pid in ``DIR/fleet.json`` and stopped by pid.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .sim import control, nvidia_smi

STATE_FILE = "fleet.json"
CLOUDS = ("aws", "gcp", "azure")
SSHD = "/usr/sbin/sshd"
# podman here needs runc and explicit ulimits (crun fails on some kernels' cgroups); shipped in the wheel.
CONTAINERS_CONF = Path(__file__).resolve().with_name("data") / "containers.conf"


class FleetError(RuntimeError):
    """The fleet could not be brought up, inspected or taken down; the message says what to do."""


@dataclass
class Node:
    name: str
    address: str
    port: int
    cloud: str
    standby: bool
    root: str
    sshd_pid: int = 0
    metadata_pid: int = 0
    metadata_url: str = ""
    gpus: int = 2

    @property
    def paths(self) -> dict[str, str]:
        root = Path(self.root)
        return {"checkpoints": str(root / "checkpoints"), "workloads": str(root / "workloads"),
                "state": str(root / "state"), "bin": str(root / "bin"), "ssh": str(root / "ssh"),
                "gpu_state": str(root / "gpus.json"), "ssh_config": str(root / "ssh" / "config"),
                "boot_id": str(root / "state" / "boot_id")}


@dataclass
class Fleet:
    dir: str
    fleet_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    user: str = field(default_factory=getpass.getuser)
    python: str = ""
    image: str = ""
    trainer: str = ""
    nodes: list[Node] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, directory: Path) -> Fleet:
        path = Path(directory) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FleetError(f"no fleet in {directory} (no {STATE_FILE}); bring one up with "
                             f"`spot-migration fleet up --dir {directory}`") from None
        except ValueError as exc:
            raise FleetError(f"{path} is not valid JSON ({exc}); remove {directory} and bring the fleet up again") from None
        nodes = [Node(**n) for n in data.pop("nodes", [])]
        return cls(nodes=nodes, **data)

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise FleetError(f"no node {name!r} in the fleet in {self.dir}; nodes: {', '.join(n.name for n in self.nodes)}")

    @property
    def keys(self) -> dict[str, str]:
        base = Path(self.dir) / "keys"
        return {"private": str(base / "id_ed25519"), "public": str(base / "id_ed25519.pub"),
                "authorized": str(base / "authorized_keys"), "known_hosts": str(Path(self.dir) / "known_hosts")}

    @property
    def inventory_path(self) -> Path:
        return Path(self.dir) / "inventory.yml"

    @property
    def image_store(self) -> Path:
        """Images shared by every node (read-only for them); each node has its own container storage."""
        return Path(self.dir) / "images"

    def container_env(self, node: Node | None = None) -> dict[str, str]:
        conf = Path(node.root) / "storage.conf" if node else self.image_store / "storage.conf"
        return {"CONTAINERS_CONF": str(CONTAINERS_CONF), "CONTAINERS_STORAGE_CONF": str(conf)}


# ---------------------------------------------------------------------- helpers

def _alive(pid: int, start_ticks: str | None = None) -> bool:
    """``pid`` runs and is not a zombie (and, given its kernel start time, is still the same process)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and (start_ticks is None or fields[19] == start_ticks)


def _stop_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM to all, wait up to ``timeout`` for all, SIGKILL what is left: by pid, never by name."""
    pids = [pid for pid in pids if _alive(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_alive(pid) for pid in pids):
        time.sleep(0.02)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(pid)


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    _stop_pids([pid], timeout)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _ssh_banner(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _node_python() -> str:
    """Nodes run modules with the system Python when there is one: the standard library only, as on a real node."""
    for candidate in ("/usr/bin/python3",):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


# ---------------------------------------------------------------------- up

def up(directory: Path, nodes: int = 4, clouds: tuple[str, ...] = CLOUDS, gpus: int = 2, standby: int = 1,
       base_address: str = "127.0.0.10", image: bool = True, log=print) -> Fleet:
    """Bring up a fleet in ``directory`` and write its inventory. Refuses a directory with a fleet still
    running; recovers one whose processes are all gone."""
    directory = Path(directory).resolve()
    if not os.access(SSHD, os.X_OK):
        raise FleetError(f"{SSHD} not found: install openssh-server (make setup does, as root)")
    if nodes < 1 or not 0 <= standby <= nodes:
        raise FleetError(f"--nodes {nodes} --standby {standby}: need at least one node and no more standby than nodes")
    for cloud in clouds:
        if cloud not in CLOUDS:
            raise FleetError(f"unknown cloud {cloud!r}; choose from {', '.join(CLOUDS)}")
    if (directory / STATE_FILE).exists():
        old = Fleet.load(directory)
        running = [(n.name, p) for n in old.nodes for p in (n.sshd_pid, n.metadata_pid) if _alive(p)]
        if running:
            raise FleetError(f"a fleet is already running in {directory} (pids {', '.join(str(p) for _, p in running)}); "
                             f"run `spot-migration fleet down --dir {directory}` first")
        log(f"recovering {directory}: the fleet recorded there is no longer running; starting afresh")
        down(directory, log=lambda *_: None)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(dir=str(directory), python=_node_python())
    prefix, last = base_address.rsplit(".", 1)
    keys = fleet.keys
    Path(keys["private"]).parent.mkdir(parents=True, exist_ok=True)
    result = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"spot-migration-fleet-{fleet.fleet_id}",
                   "-f", keys["private"]])
    if result.returncode != 0:
        raise FleetError(f"ssh-keygen failed: {result.stderr.strip()}")
    shutil.copyfile(keys["public"], keys["authorized"])
    os.chmod(keys["authorized"], 0o600)
    share = directory / "share"
    share.mkdir()
    fleet.trainer = str(share / "trainer.py")
    shutil.copyfile(Path(__file__).with_name("trainer.py"), fleet.trainer)
    try:
        if image and shutil.which("podman"):
            from .image import ImageError, build_image

            _write_storage_conf(fleet.image_store / "storage.conf", fleet.image_store)
            try:
                fleet.image = build_image("podman", env=fleet.container_env())
            except ImageError as exc:
                raise FleetError(f"could not build the trainer image: {exc}") from None
        for i in range(nodes):
            is_standby = i >= nodes - standby
            address = f"{prefix}.{int(last) + 1 + i}"
            name = f"standby{i - (nodes - standby) + 1}" if is_standby else f"node{i + 1}"
            node = Node(name=name, address=address, port=_free_port(address), cloud=clouds[i % len(clouds)],
                        standby=is_standby, root=str(directory / "nodes" / name), gpus=gpus)
            fleet.nodes.append(node)
            _prepare_node(fleet, node)
        _write_known_hosts(fleet)
        for node in fleet.nodes:
            _write_client_config(fleet, node)
            _start_node(fleet, node)
            fleet.save()
        _wait_ready(fleet)
        write_inventory(fleet)
        fleet.save()
    except BaseException:
        fleet.save()
        down(directory, log=lambda *_: None)
        raise
    described = ", ".join(f"{n.name} ({n.cloud}{' standby' if n.standby else ''}) {n.address}:{n.port}"
                          for n in fleet.nodes)
    log(f"fleet {fleet.fleet_id} up in {directory}: {described}")
    log(f"inventory: {fleet.inventory_path}")
    return fleet


def _prepare_node(fleet: Fleet, node: Node) -> None:
    paths = node.paths
    for key in ("checkpoints", "workloads", "state", "bin", "ssh"):
        Path(paths[key]).mkdir(parents=True, exist_ok=True)
    home = Path(node.root) / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    hostkey = Path(paths["ssh"]) / "ssh_host_ed25519_key"
    result = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{node.name}-host", "-f", str(hostkey)])
    if result.returncode != 0:
        raise FleetError(f"ssh-keygen for {node.name}'s host key failed: {result.stderr.strip()}")
    Path(paths["boot_id"]).write_text(str(uuid.uuid4()) + "\n")
    state = nvidia_smi.default_state(node.gpus, seed=f"{fleet.fleet_id}/{node.name}")
    Path(paths["gpu_state"]).write_text(json.dumps(state, indent=2))
    nvidia_smi.install(Path(paths["bin"]), Path(paths["gpu_state"]))
    _write_storage_conf(Path(node.root) / "storage.conf", Path(node.root) / "containers",
                        fleet.image_store / "storage" if fleet.image else None)
    env = {
        # A node's own home, as each machine has: the login shell sshd starts for every command reads the home's
        # ~/.bashrc (bash does when sshd runs it), and this machine's root one may do anything (pyenv init: 0.1 s of
        # CPU per SSH command), where a cloud image's returns at once when not interactive.
        "HOME": str(home),
        "PATH": f"{paths['bin']}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SPOT_NODE": node.name,
        "SPOT_NODE_ROOT": node.root,
        "SPOT_FLEET_ID": fleet.fleet_id,
        "SPOT_BOOT_ID_FILE": paths["boot_id"],
        nvidia_smi.STATE_ENV: paths["gpu_state"],
        **fleet.container_env(node),
    }
    config = [
        f"ListenAddress {node.address}:{node.port}",
        f"HostKey {hostkey}",
        f"PidFile {Path(paths['ssh']) / 'sshd.pid'}",
        f"AuthorizedKeysFile {fleet.keys['authorized']}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
        "SetEnv " + " ".join(f'{k}="{v}"' for k, v in env.items()),
    ]
    (Path(paths["ssh"]) / "sshd_config").write_text("\n".join(config) + "\n")


def _write_storage_conf(path: Path, base: Path, shared: Path | None = None) -> None:
    """Container storage of one node (or of the shared image store): vfs, so it works for any user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f'[storage]\ndriver = "vfs"\ngraphroot = "{base / "storage"}"\nrunroot = "{base / "run"}"\n'
    if shared:
        text += f'[storage.options]\nadditionalimagestores = ["{shared}"]\n'
    path.write_text(text)


def _write_known_hosts(fleet: Fleet) -> None:
    lines = []
    for node in fleet.nodes:
        key = (Path(node.paths["ssh"]) / "ssh_host_ed25519_key.pub").read_text().split()
        lines.append(f"[{node.address}]:{node.port} {key[0]} {key[1]}")
    Path(fleet.keys["known_hosts"]).write_text("\n".join(lines) + "\n")


def _write_client_config(fleet: Fleet, node: Node) -> None:
    """Each node's own ssh client configuration: how it reaches the others, host keys checked."""
    lines = []
    for other in fleet.nodes:
        lines += [f"Host {other.name} {other.address}", f"  HostName {other.address}", f"  Port {other.port}", ""]
    lines += ["Host *", f"  User {fleet.user}", f"  IdentityFile {fleet.keys['private']}", "  IdentitiesOnly yes",
              f"  UserKnownHostsFile {fleet.keys['known_hosts']}", "  StrictHostKeyChecking yes", "  BatchMode yes",
              "  ConnectTimeout 5"]
    Path(node.paths["ssh_config"]).write_text("\n".join(lines) + "\n")


def _start_node(fleet: Fleet, node: Node) -> None:
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = open(Path(node.root) / "sshd.log", "ab")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(Path(node.paths["ssh"]) / "sshd_config")],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    node.sshd_pid = proc.pid
    sim = control.spawn_metadata(node.cloud, Path(node.root) / "state", host=node.address, name=node.name)
    node.metadata_pid = sim.pid
    node.metadata_url = sim.url


def _wait_ready(fleet: Fleet, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    pending = list(fleet.nodes)
    while pending and time.monotonic() < end:
        for node in list(pending):
            if not _alive(node.sshd_pid):
                tail = (Path(node.root) / "sshd.log").read_text(errors="replace")[-500:]
                raise FleetError(f"sshd for {node.name} exited: {tail.strip()}")
            if _ssh_banner(node.address, node.port):
                pending.remove(node)
        time.sleep(0.05)
    if pending:
        raise FleetError(f"sshd did not answer within {timeout} s on: {', '.join(n.name for n in pending)}")


def write_inventory(fleet: Fleet) -> Path:
    keys = fleet.keys
    common = {
        "ansible_user": fleet.user,
        "ansible_ssh_private_key_file": keys["private"],
        # Host keys are checked against the fleet's own known_hosts, never skipped.
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={keys['known_hosts']} -o StrictHostKeyChecking=yes "
                                   "-o IdentitiesOnly=yes",
        "ansible_python_interpreter": fleet.python,
        # An sshd running as an ordinary user cannot hand out terminals; modules need none.
        "ansible_ssh_use_tty": False,
        "ansible_pipelining": True,
        "spot_fleet_dir": fleet.dir,
        "spot_fleet_id": fleet.fleet_id,
        "spot_trainer": fleet.trainer,
        "spot_trainer_image": fleet.image or None,
        # The nodes share this machine: the eviction agent must never install a systemd unit on it.
        "eviction_agent_service_manager": "background",
    }
    groups: dict[str, dict[str, Any]] = {"spot": {"hosts": {}}, "standby": {"hosts": {}}}
    for node in fleet.nodes:
        paths = node.paths
        groups["standby" if node.standby else "spot"]["hosts"][node.name] = {
            "ansible_host": node.address,
            "ansible_port": node.port,
            "spot_provider": node.cloud,
            "spot_metadata_url": node.metadata_url,
            "spot_node_root": node.root,
            "spot_checkpoint_root": paths["checkpoints"],
            "spot_workload_root": paths["workloads"],
            "spot_state_dir": paths["state"],
            "spot_ssh_config": paths["ssh_config"],
            "spot_gpu_count": node.gpus,
            "spot_lifecycle": "on-demand" if node.standby else "spot",
        }
    inventory = {"all": {"vars": common, "children": groups}}
    fleet.inventory_path.write_text("# Written by spot-migration fleet up; rewritten on every up.\n"
                                    + yaml.safe_dump(inventory, sort_keys=False))
    return fleet.inventory_path


# ---------------------------------------------------------------------- down, status, inject

def _workload_pids(node: Node) -> list[tuple[int, str | None]]:
    found = []
    root = Path(node.paths["workloads"])
    for pidfile in root.glob("*/workload.pid"):
        try:
            info = json.loads(pidfile.read_text())
            found.append((int(info["pid"]), info.get("start_ticks")))
        except (OSError, ValueError, KeyError):
            continue
    return found


def agent_pids(node: Node) -> list[tuple[int, str | None]]:
    """The eviction agent's supervisor and agent on ``node`` (role spot.migration.eviction_agent), if installed."""
    pidfile = Path(node.paths["state"]) / "eviction-agent" / "state" / "agent.pid"
    try:
        info = json.loads(pidfile.read_text())
    except (OSError, ValueError):
        return []
    return [(int(info[k]), info.get(t)) for k, t in (("supervisor", "start_ticks"), ("agent", "agent_ticks"))
            if info.get(k)]


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (sshd's per-connection sessions and what they run), deepest first."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return list(reversed(found))


def down(directory: Path, log=print) -> list[int]:
    """Stop everything the fleet started: workloads on its nodes, their containers, the sessions its sshds
    opened, the sshds and the simulators."""
    fleet = Fleet.load(Path(directory))
    stopped = []
    for node in fleet.nodes:
        for pid, ticks in agent_pids(node) + _workload_pids(node):
            if _alive(pid, ticks):
                _stop_pid(pid)
                stopped.append(pid)
        if shutil.which("podman") and (Path(node.root) / "containers").exists():
            # Each node has its own container storage: remove every container in it.
            subprocess.run(["podman", "rm", "--force", "--all", "--time", "5"],
                           env=dict(os.environ, **fleet.container_env(node)), capture_output=True, check=False)
        if _alive(node.sshd_pid):
            for pid in _descendants(node.sshd_pid):
                _stop_pid(pid, timeout=2.0)
        for pid in (node.sshd_pid, node.metadata_pid):
            if _alive(pid):
                _stop_pid(pid)
                stopped.append(pid)
    log(f"fleet {fleet.fleet_id} down in {directory}: stopped {len(stopped)} process(es)")
    return stopped


def kill_node(directory: Path, node_name: str) -> list[int]:
    """Take a node away without a notice, all at once: SIGKILL its agent, its workloads, its sshd listener and its
    metadata simulator, as a hardware loss would. Returns the pids killed.

    The SSH sessions open at that moment get SIGTERM (SIGKILL a second later): on this machine every node is the same
    user, and a session's login shell killed outright can leave that user's shell start-up half done for everyone
    (pyenv's rehash lock, for one, makes every later SSH session wait 60 s)."""
    fleet = Fleet.load(Path(directory))
    node = fleet.node(node_name)
    victims = [pid for pid, ticks in agent_pids(node) + _workload_pids(node) if _alive(pid, ticks)]
    for pid in list(victims):
        victims.extend(p for p in _descendants(pid) if p not in victims)
    sessions = _descendants(node.sshd_pid) if _alive(node.sshd_pid) else []
    victims += [pid for pid in (node.sshd_pid, node.metadata_pid) if _alive(pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _stop_pids(sessions, timeout=1.0)
    for pid in victims:
        _reap(pid)
    return victims + sessions


def restart_node(directory: Path, node_name: str) -> Node:
    """Bring a node taken away by ``kill_node`` back: a new boot (new boot id), its sshd on the same address and
    port, its metadata simulator on the same URL. Its agent and workloads are whatever its boot starts (nothing here:
    run the agent role again, as systemd would start it)."""
    fleet = Fleet.load(Path(directory))
    node = fleet.node(node_name)
    if _alive(node.sshd_pid):
        raise FleetError(f"{node_name} is running (sshd pid {node.sshd_pid}); kill_node it first")
    port = int(node.metadata_url.rsplit(":", 1)[1].split("/")[0])
    new_boot(Path(directory), node_name)
    fleet = Fleet.load(Path(directory))
    node = fleet.node(node_name)
    log = open(Path(node.root) / "sshd.log", "ab")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(Path(node.paths["ssh"]) / "sshd_config")],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    node.sshd_pid = proc.pid
    sim = control.spawn_metadata(node.cloud, Path(node.root) / "state", host=node.address, port=port, name=node.name)
    node.metadata_pid, node.metadata_url = sim.pid, sim.url
    fleet.save()
    end = time.monotonic() + 20
    while not _ssh_banner(node.address, node.port) and time.monotonic() < end:
        time.sleep(0.05)
    return node


def status(directory: Path) -> list[dict[str, Any]]:
    fleet = Fleet.load(Path(directory))
    rows = []
    for node in fleet.nodes:
        notices = None
        if _alive(node.metadata_pid):
            try:
                notices = [n["kind"] for n in control.state(node.metadata_url)["notices"]]
            except control.SimulatorError:
                notices = None
        workloads = [pid for pid, ticks in _workload_pids(node) if _alive(pid, ticks)]
        rows.append({"name": node.name, "cloud": node.cloud, "standby": node.standby,
                     "ssh": f"{node.address}:{node.port}", "sshd": _alive(node.sshd_pid) and _ssh_banner(node.address, node.port),
                     "metadata": _alive(node.metadata_pid), "notices": notices, "workload_pids": workloads})
    return rows


def new_boot(directory: Path, node_name: str) -> str:
    """Give a node a new boot id, as if its VM had been stopped and started again (the kernel's boot id changes;
    GCE keeps the instance id, so a second preemption differs from the first only by the boot)."""
    node = Fleet.load(Path(directory)).node(node_name)
    boot_id = str(uuid.uuid4())
    Path(node.paths["boot_id"]).write_text(boot_id + "\n")
    return boot_id


def inject(directory: Path, node_name: str, notice: str, **extra: Any) -> dict[str, Any]:
    fleet = Fleet.load(Path(directory))
    node = fleet.node(node_name)
    if node.standby and notice != "clear":
        raise FleetError(f"{node.name} is an on-demand standby node; standby nodes never get notices")
    if not _alive(node.metadata_pid):
        raise FleetError(f"{node.name}'s metadata simulator (pid {node.metadata_pid}) is not running; is the fleet up?")
    return control.inject(node.metadata_url, notice, **extra)
