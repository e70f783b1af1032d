"""The agent's own replication (``_follow``): real rsync and the real remote program (``python3 -`` with the
collection's replica code on stdin) run locally in place of SSH; only the hop to another machine is left out
(``tests/fleet/test_replication.py`` has it). New complete checkpoints are copied and published as they appear,
never before they are complete; a failed copy leaves the previous replica; the plan comes only from a signed reply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.spot.migration.plugins.module_utils import _agent, _follow, _signing
from ansible_collections.spot.migration.plugins.module_utils import _checkpoint as ck
from ansible_collections.spot.migration.plugins.module_utils import _replica as rep
from ansible_collections.spot.migration.plugins.module_utils._metadata import Response


class LocalHop:
    """Runs what the follower would run over SSH on this machine: ``ssh ... host python3 -`` becomes ``python -``,
    rsync's ``host:path`` becomes ``path``. Records every command; ``fail_rsync`` makes the next copies fail."""

    def __init__(self):
        self.commands: list[list[str]] = []
        self.fail_rsync = 0

    def __call__(self, argv, stdin=None, timeout=None):
        self.commands.append(list(argv))
        if "rsync" in argv:
            argv = list(argv)
            i = argv.index("--rsh")
            del argv[i:i + 2]
            argv[-1] = argv[-1].split(":", 1)[1]
            if self.fail_rsync:
                self.fail_rsync -= 1
                # A copy cut off half way: part of the bytes arrived, then the connection was gone.
                os.makedirs(argv[-1], exist_ok=True)
                with open(os.path.join(argv[-1], "partial"), "wb") as handle:
                    handle.write(b"x" * 100)
                return 12, "", "rsync: connection unexpectedly closed"
        else:
            assert argv[0] == "ssh" and "BatchMode=yes" in argv and argv[-1] == "-", argv
            argv = [sys.executable, "-"]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        return proc.returncode, proc.stdout, proc.stderr


def safetensors(path, size):
    """A valid safetensors file of one U8 tensor of ``size`` bytes."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + os.urandom(size))


def write_checkpoint(directory, step, size=64 * 1024, shards=("model.safetensors",)):
    """A Hugging Face Trainer checkpoint written the way the Trainer does (weights, then trainer_state.json)."""
    final = directory / f"checkpoint-{step}"
    final.mkdir(parents=True)
    for name in shards:
        safetensors(final / name, size)
    (final / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return final


def plan_item(base, **more):
    item = {"workload": "job", "replica": "standby1", "checkpoint_dir": os.path.join(base, "ckpt"), "host": "standby1",
            "root": os.path.join(base, "replicas", "job"), "ssh": ["ssh", "-o", "BatchMode=yes", "-p", "2222"],
            "python": "python3", "keep": 2, "bwlimit": 0, "last_step": -1}
    item.update(more)
    return item


@pytest.fixture
def follower():
    hop = LocalHop()
    log: list[str] = []
    notified: list[float] = []
    f = _follow.Follower(log.append, poll=0.05, run=hop, notify=lambda: notified.append(time.time()))
    f.hop, f.logged, f.notified = hop, log, notified
    yield f
    f.close()


def test_each_new_complete_checkpoint_is_published_and_reported(follower, tmp_path):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 100)
    follower.update([plan_item(tmp_path)])
    assert follower.tick() == ["job"] and follower.notified
    root = tmp_path / "replicas" / "job"
    assert json.loads((root / "latest.json").read_text())["step"] == 100
    ck.verify(str(root / "step-100" / "checkpoint-100"))
    assert follower.tick() == []  # nothing new: nothing copied
    write_checkpoint(ckpt, 200)
    assert follower.tick() == ["job"]
    write_checkpoint(ckpt, 300)
    assert follower.tick() == ["job"]
    assert [r["step"] for r in rep.replicas(str(root))] == [200, 300]  # keep: 2
    (report,) = follower.report()
    assert report["step"] == 300 and report["source_step"] == 300 and report["error"] is None
    assert report["replica"] == "standby1" and report["bytes"] > 64 * 1024
    # The copy ran at low priority, with rsync's whole-file mode, over the plan's ssh.
    rsyncs = [c for c in follower.hop.commands if "rsync" in c]
    rsh = f"ssh -o ControlMaster=auto -o ControlPersist=120 -o ControlPath={follower.control_dir}/%C -o BatchMode=yes -p 2222"
    assert all("--whole-file" in c and c[c.index("--rsh") + 1] == rsh for c in rsyncs)
    assert rsyncs[0][:3] == ["nice", "-n", "10"]
    assert not (tmp_path / ".spot-following" / "job").exists()  # the hold is gone after the copy


def test_unchanged_shards_are_linked_from_the_previous_replica(follower, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = write_checkpoint(ckpt, 100, shards=["a.safetensors", "b.safetensors"])
    follower.update([plan_item(tmp_path)])
    follower.tick()
    second = tmp_path / "ckpt" / "checkpoint-200"
    os.mkdir(second)
    os.link(first / "a.safetensors", second / "a.safetensors")  # a frozen shard hard-linked into the next checkpoint
    safetensors(second / "b.safetensors", 64 * 1024)
    (second / "trainer_state.json").write_text(json.dumps({"global_step": 200}))
    assert follower.tick() == ["job"]
    root = tmp_path / "replicas" / "job"
    old, new = root / "step-100" / "checkpoint-100", root / "step-200" / "checkpoint-200"
    assert os.stat(old / "a.safetensors").st_ino == os.stat(new / "a.safetensors").st_ino
    assert os.stat(old / "b.safetensors").st_ino != os.stat(new / "b.safetensors").st_ino
    ck.verify(str(new))


def test_an_incomplete_checkpoint_is_never_copied(follower, tmp_path):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 100)
    follower.update([plan_item(tmp_path)])
    follower.tick()
    torn = write_checkpoint(ckpt, 200)  # cut short: the shard has fewer bytes than its header says
    with open(torn / "model.safetensors", "r+b") as handle:
        handle.truncate(4096)
    assert follower.tick() == []
    assert [r["step"] for r in rep.replicas(str(tmp_path / "replicas" / "job"))] == [100]


def test_a_failed_copy_leaves_the_previous_replica_and_is_retried(follower, tmp_path):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 100)
    follower.update([plan_item(tmp_path)])
    follower.tick()
    root = tmp_path / "replicas" / "job"
    before = (root / "latest.json").read_text()
    write_checkpoint(ckpt, 200)
    follower.hop.fail_rsync = 1
    assert follower.tick() == []
    assert (root / "latest.json").read_text() == before and not list(root.glob(".incoming-*"))
    (report,) = follower.report()
    assert report["step"] == 100 and "rsync exit 12" in report["error"] and "connection unexpectedly" in report["error"]
    assert any("rsync exit 12" in line for line in follower.logged)
    assert follower.tick() == ["job"]  # the next pass copies it
    assert follower.report()[0]["error"] is None and follower.report()[0]["step"] == 200


def test_a_copy_that_fails_verification_is_not_published(follower, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 100)
    follower.update([plan_item(tmp_path)])
    real = follower.hop.__call__

    def corrupting(argv, stdin=None, timeout=None):
        result = real(argv, stdin, timeout)
        if "rsync" in argv:  # bytes altered in transit: the manifest check on the replica node must catch it
            shard = os.path.join(argv[-1].split(":", 1)[1], "model.safetensors")
            with open(shard, "r+b") as handle:
                handle.seek(-2, os.SEEK_END)
                handle.write(b"\xff\xfe")
        return result

    follower.run_cmd = corrupting
    assert follower.tick() == []
    root = tmp_path / "replicas" / "job"
    assert not list(root.glob("step-*")) and not list(root.glob(".incoming-*"))
    assert "not published" in follower.report()[0]["error"] and "model.safetensors" in follower.report()[0]["error"]


def test_a_new_replica_node_starts_over_and_a_notice_pauses_following(follower, tmp_path):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 100)
    follower.update([plan_item(tmp_path)])
    follower.tick()
    follower.update([plan_item(tmp_path, replica="node3", host="node3", root=str(tmp_path / "elsewhere" / "job"))])
    assert follower.report()[0]["step"] is None and follower.report()[0]["replica"] == "node3"
    assert follower.tick() == ["job"]
    assert (tmp_path / "elsewhere" / "job" / "step-100").is_dir()
    follower.pause("notice n-1")
    write_checkpoint(ckpt, 200)
    assert follower.tick() == []
    follower.resume()  # the notice is gone (cancelled, or the node survived it)
    assert follower.tick() == ["job"]
    follower.update([])
    assert follower.report() == []


@pytest.mark.parametrize("items, message", [
    ({"workload": "job"}, "not a list"),
    ([{"workload": "job", "checkpoint_dir": "/c", "host": "h", "root": "/r"}], "lacks one of"),
    ([plan_item("/nowhere", ssh="ssh -p 22")], "not an argv list"),
    ([plan_item("/nowhere", ssh=["ssh", "-F", "a 'b\" c"])], "both quote characters"),
])
def test_a_bad_plan_is_refused_with_the_value(items, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _follow.check_plan(items)


def test_rsh_quoting_survives_rsyncs_own_splitting():
    assert _follow.rsync_rsh(["ssh", "-F", "/path with space/cfg"]) == "ssh -F '/path with space/cfg'"
    assert _follow.rsync_rsh(["ssh", "-o", "ProxyCommand=it's"]) == 'ssh -o "ProxyCommand=it\'s"'


def _agent_with(tmp_path, reply):
    tmp_path.mkdir(exist_ok=True)
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    return _agent.Agent(dict(_agent.DEFAULTS, node="node1", watcher_url="http://127.0.0.1:9", secret_file=str(secret),
                             state_dir=str(tmp_path / "state"), workload_root=str(tmp_path / "w"), runtimes=["process"]),
                        fetch=reply, log=lambda msg: None)


def signed_reply(secret: bytes, answer: dict, nonce_of=lambda headers: headers[_signing.NONCE_HEADER]):
    def fetch(method, url, headers, timeout, body=None):
        data = json.dumps(dict(answer, in_reply_to=nonce_of(headers))).encode()
        return Response(202, _signing.sign(secret, data), data)
    return fetch


def test_the_plan_is_taken_only_from_a_signed_reply_to_this_push(tmp_path):
    secret = _signing.load_secret("s" * 32)
    answer = {"accepted": True, "replicate": [plan_item(tmp_path)]}
    agent = _agent_with(tmp_path, signed_reply(secret, answer))
    assert agent._post(agent.heartbeat_payload()) == (True, None)
    assert [r["workload"] for r in agent.follower.report()] == ["job"]
    payload = agent.heartbeat_payload()
    assert payload["capabilities"] == ["replicate"] and payload["replicas"][0]["replica"] == "standby1"
    for name, reply in [
        ("unsigned", lambda *a, **k: Response(202, {}, json.dumps(answer).encode())),
        ("wrong secret", signed_reply(_signing.load_secret("t" * 32), answer)),
        ("a reply to another push", signed_reply(secret, answer, nonce_of=lambda headers: "0" * 32)),
    ]:
        other = _agent_with(tmp_path / name.replace(" ", "-"), reply)
        assert other._post(other.heartbeat_payload()) == (True, None)  # delivered, but no instructions taken
        assert other.follower.report() == [], name
