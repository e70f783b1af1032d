"""Signed pushes: the one wire format the agent, the watcher and the EDA source share."""

from __future__ import annotations

import pytest

from ansible_collections.spot.migration.plugins.module_utils._signing import SignatureError, load_secret, sign, verify

SECRET = load_secret("0123456789abcdef0123456789abcdef")
BODY = b'{"type": "notice", "node": "node1"}'


class Nonces:
    def __init__(self):
        self.seen = set()

    def __call__(self, nonce, sent_at):
        if nonce in self.seen:
            return True
        self.seen.add(nonce)
        return False


def test_round_trip_and_every_request_has_its_own_nonce():
    first, second = sign(SECRET, BODY, now=1000.0), sign(SECRET, BODY, now=1000.0)
    assert first["X-Spot-Nonce"] != second["X-Spot-Nonce"]
    nonces = Nonces()
    assert verify(SECRET, first, BODY, nonces, now=1001.0) == 1000.0
    assert verify(SECRET, {k.lower(): v for k, v in second.items()}, BODY, nonces, now=1001.0) == 1000.0


@pytest.mark.parametrize("mutate, reason", [
    (lambda h, b: ({}, b), "unsigned"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "X-Spot-Nonce"}, b), "unsigned"),
    (lambda h, b: (dict(h, **{"X-Spot-Timestamp": "yesterday"}), b), "malformed"),
    (lambda h, b: (dict(h, **{"X-Spot-Signature": "md5=abc"}), b), "malformed"),
    (lambda h, b: (h, b + b" "), "forged"),
    (lambda h, b: (dict(h, **{"X-Spot-Timestamp": "1000.001"}), b), "forged"),
    (lambda h, b: (sign(b"another secret of 32 bytes......", b, now=1000.0), b), "forged"),
    (lambda h, b: (sign(SECRET, b, now=1000.0 - 301), b), "stale"),
    (lambda h, b: (sign(SECRET, b, now=1000.0 + 301), b), "stale"),
])
def test_refusals_name_their_reason(mutate, reason):
    headers, body = mutate(sign(SECRET, BODY, now=1000.0), BODY)
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, headers, body, Nonces(), now=1000.0)
    assert caught.value.reason == reason


def test_replay_refused_and_a_forged_push_does_not_burn_the_nonce():
    headers = sign(SECRET, BODY, now=1000.0)
    nonces = Nonces()
    with pytest.raises(SignatureError):
        verify(SECRET, headers, BODY + b"x", nonces, now=1000.0)
    verify(SECRET, headers, BODY, nonces, now=1000.0)
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, headers, BODY, nonces, now=1000.0)
    assert caught.value.reason == "replayed"


@pytest.mark.parametrize("value", ["", "   ", "short", b"fifteen bytes!!"])
def test_short_secrets_refused(value):
    with pytest.raises(SignatureError, match="at least 16"):
        load_secret(value)
