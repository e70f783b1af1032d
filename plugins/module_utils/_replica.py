# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checkpoint replicas on a node that is not the workload's: published only complete and verified.

Layout of one workload's replica root::

    <root>/.incoming-<step>-<id>/<checkpoint>[.spot-manifest.json]   being copied (rsync), never read
    <root>/step-<step>/<checkpoint>[.spot-manifest.json]             published: verified, then renamed into place
    <root>/latest.json                                               the newest published step (atomic rewrite)

A replica is visible under ``step-<N>`` only after every file matched the source's manifest, through one rename
on the same file system; an interrupted copy leaves an ``.incoming-*`` directory that is never read and is cleared
later, and the previous replicas stay as they were. Standard library only (the agent may use it too).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import binascii
import os
import re
import shutil
import time

from . import _checkpoint as ck
from ._common import write_json_atomic

STEP_DIR = re.compile(r'^step-(\d+)$')
INCOMING = re.compile(r'^\.incoming-(\d+)-[A-Za-z0-9_.-]+$')
LATEST = 'latest.json'
STALE_INCOMING_S = 3600.0


class ReplicaError(Exception):
    """A replica could not be published; the message says which file and why."""


def _iso(epoch):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))


def _entry(root, name):
    """The one checkpoint inside a replica directory (its manifest aside)."""
    directory = os.path.join(root, name)
    names = sorted(n for n in os.listdir(directory) if not n.endswith(ck.MANIFEST_NAME))
    if len(names) != 1:
        raise ReplicaError('%s holds %d checkpoints (%s); a replica holds exactly one'
                           % (directory, len(names), ', '.join(names) or 'none'))
    return os.path.join(directory, names[0])


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def replicas(root):
    """Published replicas, oldest first: ``[{step, name, checkpoint, bytes, published_at}]``."""
    out = []
    if not os.path.isdir(root):
        return out
    for name in os.listdir(root):
        match = STEP_DIR.match(name)
        if not match:
            continue
        try:
            checkpoint = _entry(root, name)
        except (ReplicaError, OSError):
            continue
        mtime = os.stat(os.path.join(root, name)).st_mtime
        out.append({'step': int(match.group(1)), 'name': name, 'checkpoint': checkpoint, 'bytes': _size(checkpoint),
                    'published_at': _iso(mtime), 'published_epoch': mtime})
    return sorted(out, key=lambda r: r['step'])


def _write_latest(root, replica):
    write_json_atomic(os.path.join(root, LATEST), replica, durable=True, indent=None)


def prune(root, keep, now=None):
    """Remove all but the newest ``keep`` replicas and incoming directories older than an hour. Returns the names
    removed."""
    now = time.time() if now is None else now
    removed = []
    published = replicas(root)
    for replica in published[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, replica['name']), ignore_errors=True)
        removed.append(replica['name'])
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if INCOMING.match(name) and now - os.stat(os.path.join(root, name)).st_mtime > STALE_INCOMING_S:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(name)
    return removed


def publish(root, incoming, step, keep=2, check_mode=False):
    """Verify ``<root>/<incoming>`` against the manifest that came with it and rename it to ``step-<step>``;
    then point ``latest.json`` at the newest replica and keep ``keep`` of them. A copy that fails verification is
    removed and nothing else changes. Returns a result dict."""
    if not INCOMING.match(incoming or ''):
        raise ReplicaError('incoming %r is not an .incoming-<step>-<id> name' % incoming)
    if keep < 1:
        raise ReplicaError('keep is %r; at least one replica must be kept' % keep)
    final = 'step-%d' % step
    target = os.path.join(root, final)
    staged = os.path.join(root, incoming)
    if os.path.isdir(target):
        if os.path.isdir(staged) and not check_mode:
            shutil.rmtree(staged, ignore_errors=True)
        current = [r for r in replicas(root) if r['name'] == final][0]
        return {'changed': False, 'replica': current, 'removed': [], 'verified': None}
    if not os.path.isdir(staged):
        raise ReplicaError('nothing was copied to %s' % staged)
    try:
        checkpoint = _entry(root, incoming)
        verified = ck.verify(checkpoint)
    except (ReplicaError, ck.CheckpointError) as exc:
        if not check_mode:
            shutil.rmtree(staged, ignore_errors=True)
        raise ReplicaError('copy of step %d in %s is not published: %s' % (step, staged, exc))
    if verified.get('step') not in (None, step):
        if not check_mode:
            shutil.rmtree(staged, ignore_errors=True)
        raise ReplicaError('copy in %s is step %s by its manifest, not %d' % (staged, verified.get('step'), step))
    if check_mode:
        return {'changed': True, 'replica': {'step': step, 'name': final}, 'removed': [], 'verified': verified}
    os.rename(staged, target)
    published = replicas(root)
    newest = published[-1]
    _write_latest(root, dict((k, v) for k, v in newest.items() if k != 'published_epoch'))
    removed = prune(root, keep)
    replica = [r for r in replicas(root) if r['name'] == final]
    return {'changed': True, 'replica': replica[0] if replica else None, 'removed': removed, 'verified': verified}


def _link_tree(src, dest):
    """Hard-link ``src`` (a file or a directory tree) to ``dest``: same file system, no bytes copied."""
    if not os.path.isdir(src):
        os.link(src, dest)
        return
    os.mkdir(dest)
    for directory, dirs, files in os.walk(src):
        rel = os.path.relpath(directory, src)
        for name in dirs:
            os.mkdir(os.path.join(dest, rel, name))
        for name in files:
            os.link(os.path.join(directory, name), os.path.join(dest, rel, name))


def hold(checkpoint_dir, hold_dir, after_step=-1, attempts=5):
    """On the source: find the newest complete checkpoint and hard-link it into ``hold_dir`` (beside the job's
    directory, same file system), so the job may delete its own copy while it is replicated; the held copy is
    checked again and sealed with a manifest there, the job's directory is not touched. When the newest is not newer
    than ``after_step`` nothing is held. A checkpoint deleted between finding and linking it: the next newest is
    tried. Returns ``{held, step, format, mtime, checkpoint, manifest, bytes}`` (``held`` None when nothing new)."""
    last_error = None
    for _attempt in range(attempts):
        found = ck.find_checkpoint(checkpoint_dir)
        base = {'checkpoint': found['checkpoint'], 'step': found.get('step'), 'format': found.get('format'),
                'mtime': found.get('mtime')}
        if found.get('step') is not None and int(found['step']) <= int(after_step):
            return dict(base, held=None, manifest=None, bytes=None, files=[], is_dir=None, incoming=None)
        if os.path.isdir(hold_dir):
            shutil.rmtree(hold_dir)
        os.makedirs(hold_dir, 0o700)
        held = os.path.join(hold_dir, os.path.basename(found['checkpoint'].rstrip(os.sep)))
        try:
            _link_tree(found['checkpoint'], held)
            cand = ck.Candidate(held, found.get('format') or 'generic')
            cand.scan()
            ck.check_candidate(cand)
        except (OSError, ck.Incomplete) as exc:  # deleted or rewritten meanwhile: look again
            last_error = exc
            continue
        sealed = ck.seal(held, fmt=found.get('format'), step=found.get('step'))
        # What to send: a directory carries its manifest inside, a file has it beside.
        files = [held] if os.path.isdir(held) else [held, sealed['manifest']]
        incoming = '.incoming-%s-%s' % (found.get('step'), binascii.hexlify(os.urandom(4)).decode('ascii'))
        return dict(base, held=held, manifest=sealed['manifest'], bytes=sealed['total_bytes'], files=files,
                    is_dir=os.path.isdir(held), incoming=incoming)
    raise ReplicaError('the newest checkpoint under %s kept changing while it was held (%d attempts): %s'
                       % (checkpoint_dir, attempts, last_error))


def info(root):
    """What a replica root holds: the published replicas (oldest first) and the newest."""
    published = replicas(root)
    incoming = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else []) if INCOMING.match(n))
    return {'replicas': published, 'latest': published[-1] if published else None, 'incoming': incoming}


def discard(root, incoming):
    """Remove one ``.incoming-*`` copy (a transfer that failed); published replicas are never touched."""
    if not INCOMING.match(incoming or ''):
        raise ReplicaError('incoming %r is not an .incoming-<step>-<id> name' % incoming)
    path = os.path.join(root, incoming)
    existed = os.path.isdir(path)
    shutil.rmtree(path, ignore_errors=True)
    return {'changed': existed, 'removed': [incoming] if existed else []}


def remote_main(request):
    """What the agent asks of a replica node over SSH (``python3 -``, this code on stdin): ``publish`` or
    ``discard``. Returns a result dict; errors come back as ``{'failed': True, 'msg': ...}``."""
    try:
        action = request.get('action')
        if action == 'publish':
            return publish(request['root'], request['incoming'], int(request['step']), int(request.get('keep', 2)))
        if action == 'discard':
            return discard(request['root'], request['incoming'])
        raise ReplicaError('unknown replica action %r' % (action,))
    except (ReplicaError, ck.CheckpointError, OSError, KeyError, ValueError) as exc:
        return {'failed': True, 'msg': '%s: %s' % (type(exc).__name__, exc)}
