"""The one rsync command line and the SSH ciphers the transfers ask for."""

from __future__ import annotations

import pytest

from spot_migration import module_utils

tr = module_utils("_transfer")
mig = module_utils("_migration")


def test_the_preferred_ciphers_go_into_the_rsh_after_ssh_itself():
    argv = tr.rsync_argv(["/c/step-1.safetensors"], "standby1:/s/", ["ssh", "-F", "/n/ssh config"],
                         ciphers=tr.PREFERRED_CIPHERS)
    rsh = argv[argv.index("--rsh") + 1]
    assert rsh == f"ssh -c {tr.PREFERRED_CIPHERS} -F '/n/ssh config'"
    assert tr.PREFERRED_CIPHERS.split(",")[0] == "aes128-gcm@openssh.com"
    # Every cipher of OpenSSH's default list is still there: a server that accepts the defaults accepts one.
    assert {"chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-gcm@openssh.com"} <= set(tr.PREFERRED_CIPHERS.split(","))
    # Empty: ssh's own choice.
    plain = tr.rsync_argv(["/c/x"], "h:/s/", ["ssh", "-p", "22"], ciphers="")
    assert plain[plain.index("--rsh") + 1] == "ssh -p 22"


@pytest.mark.parametrize("bad", ["aes128-gcm@openssh.com;rm -rf /", "aes128-ctr, aes256-ctr", ",aes128-ctr", "-oProxyCommand=x", "-F"])
def test_a_bad_cipher_list_is_refused_with_the_value(bad):
    with pytest.raises(tr.TransferError) as caught:
        tr.create_transfer("rsync", run=None, ciphers=bad)
    assert repr(bad) in str(caught.value)


def test_a_bad_cipher_list_fails_the_release_before_anything_is_stopped():
    class Driver:
        stopped = []

        def stop(self, *args, **kwargs):  # pragma: no cover - must not be reached
            self.stopped.append(args)

    driver = Driver()
    moving = [{"name": "w", "runtime": "process", "running": True, "spec": {"checkpoint_dir": "/nowhere"}}]
    with pytest.raises(tr.TransferError):
        mig.source_release({"process": driver}, None, "m-1", "node1", moving,
                           {"w": {"host": "h", "ssh": ["ssh"], "name": "standby1"}}, "rsync", False, ciphers="a b")
    assert driver.stopped == []


def test_a_transfer_is_projected_by_its_rate_since_its_first_bytes():
    from ansible_collections.spot.migration.plugins.module_utils._transfer import projected_end
    # 100 MB, the first report at t=10 with 1 MB moved, 20 MB at t=12: 9.5 MB/s -> 80 MB more take 8.4 s.
    assert projected_end(20e6, 100e6, (10.0, 1e6), 12.0) == pytest.approx(12.0 + 80e6 * 2.0 / 19e6)
    assert projected_end(20e6, 100e6, None, 12.0) is None, "no rate before the first bytes"
    assert projected_end(1e6, 100e6, (10.0, 1e6), 12.0) is None, "nothing moved since"
    assert projected_end(5e6, 0, (10.0, 1e6), 12.0) is None
