# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Signed pushes from the eviction agent: HMAC-SHA256 over ``timestamp.nonce.body``.

The agent signs, the watcher and the EDA event source verify; all three import this file, so
there is one definition of the wire format. Standard library only, no Ansible imports.

Headers: ``X-Spot-Timestamp`` (Unix seconds), ``X-Spot-Nonce`` (random, once per request) and
``X-Spot-Signature: sha256=<hex>``. A verifier rejects a bad or missing signature, a timestamp
further than ``max_skew`` seconds from its clock, and a nonce it has already seen in that window.
"""

from __future__ import absolute_import, division, print_function

import binascii
import hashlib
import hmac
import os
import time

__metaclass__ = type

TIMESTAMP_HEADER = 'X-Spot-Timestamp'
NONCE_HEADER = 'X-Spot-Nonce'
SIGNATURE_HEADER = 'X-Spot-Signature'
DEFAULT_MAX_SKEW = 300.0
MIN_SECRET_BYTES = 16


class SignatureError(Exception):
    """A push failed verification; ``reason`` is one of unsigned, malformed, forged, stale, replayed."""

    def __init__(self, reason, message):
        super(SignatureError, self).__init__(message)
        self.reason = reason


def load_secret(value, what='the HMAC secret'):
    """Bytes of a shared secret (surrounding whitespace dropped); refuses short or empty ones."""
    if isinstance(value, bytes):
        value = value.decode('utf-8')
    secret = (value or '').strip().encode('utf-8')
    if len(secret) < MIN_SECRET_BYTES:
        raise SignatureError('malformed', '%s is %d bytes long; use at least %d random bytes (for example '
                             '`openssl rand -hex 32`)' % (what, len(secret), MIN_SECRET_BYTES))
    return secret


def _mac(secret, timestamp, nonce, body):
    message = ('%s.%s.' % (timestamp, nonce)).encode('ascii') + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret, body, now=None, nonce=None):
    """The headers that make ``body`` (bytes) a signed push."""
    timestamp = '%.3f' % (time.time() if now is None else now)
    nonce = nonce or binascii.hexlify(os.urandom(16)).decode('ascii')
    return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce,
            SIGNATURE_HEADER: 'sha256=' + _mac(secret, timestamp, nonce, body)}


def _header(headers, name):
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def verify(secret, headers, body, seen_nonce, now=None, max_skew=DEFAULT_MAX_SKEW):
    """Check one push. ``seen_nonce(nonce, timestamp)`` records the nonce and returns True when it was
    already recorded (a replay). Returns the push's timestamp; raises SignatureError otherwise."""
    now = time.time() if now is None else now
    timestamp, nonce, signature = (_header(headers, h) for h in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER))
    if not signature or not timestamp or not nonce:
        raise SignatureError('unsigned', 'push without %s, %s and %s headers refused'
                             % (SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER))
    try:
        sent = float(timestamp)
    except ValueError:
        raise SignatureError('malformed', '%s %r is not a Unix time' % (TIMESTAMP_HEADER, timestamp[:40]))
    if not abs(sent) < float('inf'):  # nan and inf compare false with everything: they would pass the skew check
        raise SignatureError('malformed', '%s %r is not a finite Unix time' % (TIMESTAMP_HEADER, timestamp[:40]))
    if len(nonce) > 64 or not signature.startswith('sha256='):
        raise SignatureError('malformed', '%s or %s is malformed' % (NONCE_HEADER, SIGNATURE_HEADER))
    if not hmac.compare_digest(signature[7:], _mac(secret, timestamp, nonce, body)):
        raise SignatureError('forged', 'signature does not match the body (wrong secret or altered body)')
    if abs(now - sent) > max_skew:
        raise SignatureError('stale', 'push signed at %s is %.0f s away from this clock (more than %.0f s allowed)'
                             % (timestamp, now - sent, max_skew))
    if seen_nonce(nonce, sent):
        raise SignatureError('replayed', 'nonce %s was already used: replayed push refused' % nonce)
    return sent
