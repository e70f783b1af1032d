# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checkpoint replicas in object storage (S3, Google Cloud Storage, Azure Blob Storage), through rclone on the node.

The store is an rclone remote, ``name:bucket/prefix``, configured on the node by its owner (the node user's
``rclone.conf``; in production with the node's own instance credentials: ``env_auth``, a GCE service account,
an Azure managed identity): no credential is ever an argument, a result or a log line here. Per workload, under the remote::

    <workload>/step-<n>/data/<checkpoint>   the checkpoint's files (a directory's, or the one file)
    <workload>/step-<n>/manifest.json       its sha256 manifest, uploaded once every data object is there
    <workload>/latest.json                  {step, name, is_dir, bytes, files}, uploaded last

A replica is there for a restore only once ``latest.json`` names it: an upload cut short leaves the previous
``latest.json`` and its objects as they were, and is never restored (the next upload of the same step starts it
again). The newest ``keep`` steps stay, never the one ``latest.json`` names removed. A restore downloads one step into
a staging directory and the caller verifies every file against the manifest before renaming it into place, so a
torn or tampered object is refused. Standard library only; commands through ``run(argv) -> (rc, out, err)``.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ._checkpoint import MANIFEST_NAME, manifest_path

__metaclass__ = type

LATEST = 'latest.json'
# Up to this many files a restore streams each object through sha256 as it writes it (one `rclone cat` per file,
# ``transfers`` at a time): no second pass over the bytes. Beyond, one `rclone copy` and the caller hashes after.
STREAM_MAX_FILES = 32
CHUNK = 1 << 20
REMOTE_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]*:[A-Za-z0-9_.\-/]*$')
STEP_RE = re.compile(r'^step-(\d+)/?$')


class StoreError(Exception):
    """An object-storage operation failed; the message names the remote path and rclone's own words."""

    def __init__(self, message, **details):
        super(StoreError, self).__init__(message)
        self.details = details


def check_remote(remote):
    """``name:bucket/prefix`` with a plain name and path (letters, digits, ``_.-/``): it is an rclone argument."""
    text = '' if remote is None else str(remote)
    if not REMOTE_RE.match(text) or '..' in text.split(':', 1)[1].split('/'):
        raise StoreError('object store %r is not an rclone remote like name:bucket/prefix (letters, digits and "_.-/" '
                         'only, no "..")' % text, remote=text)
    return text.rstrip('/')


PROGRAM_RE = re.compile(r'^(/[A-Za-z0-9_.+/-]+|[A-Za-z0-9_.+-]+)$')


def check_program(program):
    """The rclone program: a plain name looked up on the PATH, or an absolute path (it is argv[0], never a shell)."""
    text = '' if program is None else str(program)
    if not PROGRAM_RE.match(text) or '..' in text.split('/'):
        raise StoreError('rclone program %r is neither a plain name nor an absolute path' % text, program=text)
    return text


class Store:
    """One rclone remote. ``transfers``: parallel streams (rclone's ``--transfers`` and ``--multi-thread-streams``)."""

    def __init__(self, run, remote, transfers=4, rclone='rclone', bwlimit=0):
        self.run = run
        self.remote = check_remote(remote)
        self.transfers = max(1, int(transfers))
        self.rclone = check_program(rclone)
        self.bwlimit = int(bwlimit or 0)

    def path(self, workload, *parts):
        if not workload or '/' in str(workload) or str(workload) in ('.', '..') or str(workload).startswith('-'):
            raise StoreError('workload %r cannot name a place in %s: it must be one plain name' % (workload, self.remote),
                             workload=workload)
        base = self.remote if self.remote.endswith(':') else self.remote + '/'
        return base + '/'.join((workload,) + parts)

    def _call(self, *args):
        argv = [self.rclone] + list(args) + self._options()
        try:
            return self.run(argv)
        except OSError as exc:
            raise self._missing(exc)

    def _missing(self, exc):
        return StoreError('%s could not be run (%s): install rclone on the node (Debian: apt install rclone)'
                          % (self.rclone, exc))

    def _options(self):
        # No --use-server-modtime: on uploads it costs rclone a second round per object (3 s of 14 for 1 GiB to S3).
        options = ['--transfers', str(self.transfers), '--checkers', str(self.transfers * 2),
                   '--multi-thread-streams', str(self.transfers), '--retries', '3', '--low-level-retries', '10',
                   '--contimeout', '15s', '--timeout', '120s', '-q']
        if self.bwlimit:
            options += ['--bwlimit', '%dk' % self.bwlimit]
        return options

    def _must(self, what, *args):
        rc, out, err = self._call(*args)
        if rc != 0:
            raise StoreError('%s failed (rclone exit %s): %s' % (what, rc, (err or out).strip()[-600:]), rc=rc)
        return out

    # ------------------------------------------------------------------ reading
    def latest(self, workload):
        """What ``latest.json`` names (None when the workload has no replica there yet)."""
        rc, out, err = self._call('cat', self.path(workload, LATEST))
        if rc != 0:
            if rc in (3, 4) or 'not found' in (err or '').lower():  # rclone: 3 directory, 4 file not found
                return None
            why = (err or out).strip()[-600:]
            raise StoreError('reading %s failed (rclone exit %s): %s' % (self.path(workload, LATEST), rc, why), rc=rc)
        try:
            data = json.loads(out)
        except ValueError:
            raise StoreError('%s is not JSON: %r' % (self.path(workload, LATEST), out[:200]))
        if not isinstance(data, dict) or not isinstance(data.get('step'), int) or not data.get('name'):
            raise StoreError('%s does not name a step and a checkpoint: %r' % (self.path(workload, LATEST), data))
        return data

    def steps(self, workload):
        """The steps stored for ``workload`` (complete or not), ascending."""
        rc, out, err = self._call('lsf', '--dirs-only', self.path(workload))
        if rc != 0:
            return []
        found = [STEP_RE.match(line.strip()) for line in out.splitlines()]
        return sorted(int(m.group(1)) for m in found if m)

    # ------------------------------------------------------------------ writing
    def upload(self, workload, checkpoint, is_dir, step, keep=2, clock=time.time):
        """Upload one sealed checkpoint as step ``step``: data, then manifest, then ``latest.json``; then keep the
        newest ``keep``. Returns ``{step, name, bytes, files, seconds}``."""
        start = clock()
        manifest = manifest_path(checkpoint)
        with open(manifest) as handle:
            sealed = json.load(handle)
        name = os.path.basename(checkpoint.rstrip('/'))
        data = self.path(workload, 'step-%d' % int(step), 'data', name)
        if is_dir:
            self._must('upload of %s' % checkpoint, 'copy', checkpoint.rstrip('/') + '/', data,
                       '--exclude', '/' + MANIFEST_NAME)
        else:
            self._must('upload of %s' % checkpoint, 'copyto', checkpoint, data)
        self._must('upload of the manifest of %s' % checkpoint, 'copyto', manifest,
                   self.path(workload, 'step-%d' % int(step), 'manifest.json'))
        latest = {'step': int(step), 'name': name, 'is_dir': bool(is_dir), 'bytes': sealed.get('total_bytes'),
                  'files': sealed.get('file_count'), 'uploaded_at': clock()}
        fd, tmp = tempfile.mkstemp(prefix='.spot-latest-', suffix='.json')
        try:
            with os.fdopen(fd, 'w') as handle:
                json.dump(latest, handle, sort_keys=True)
            self._must('publishing step %s of %s' % (step, workload), 'copyto', tmp, self.path(workload, LATEST))
        finally:
            os.unlink(tmp)
        self.prune(workload, keep, int(step))
        return dict(latest, seconds=round(clock() - start, 3))

    def prune(self, workload, keep, current):
        """Remove stored steps beyond the newest ``keep`` (never ``current``, the one ``latest.json`` names)."""
        steps = self.steps(workload)
        newest = set(sorted((s for s in steps if s <= current), reverse=True)[:max(1, int(keep))]) | {current}
        for old in steps:
            if old not in newest and old < current:
                self._call('purge', self.path(workload, 'step-%d' % old))

    # ------------------------------------------------------------------ restoring
    def download(self, workload, staging, latest=None):
        """Download the step ``latest`` names (the newest published one by default) into ``staging``: the
        checkpoint at ``staging/<name>`` with its manifest beside it (a file) or in it (a directory), unverified - the
        caller verifies before anything is renamed into place. Returns ``{staged, step, name, is_dir, bytes, hashes}``:
        ``hashes`` (``{relative path: {size, sha256}}``, for verify) when the files were hashed as they were written,
        else None (the caller hashes them)."""
        latest = latest or self.latest(workload)
        if latest is None:
            raise StoreError('no published replica of %s in %s: nothing to restore' % (workload, self.remote))
        step, name = int(latest['step']), os.path.basename(str(latest['name']))
        is_dir = bool(latest.get('is_dir'))
        staged = os.path.join(staging, name)
        source = self.path(workload, 'step-%d' % step, 'data', name)
        what = 'step %s of %s' % (step, workload)
        text = self._must('reading the manifest of %s' % what, 'cat', self.path(workload, 'step-%d' % step, 'manifest.json'))
        files = _manifest_files(text, name, is_dir, self.path(workload, 'step-%d' % step, 'manifest.json'))
        hashes = None
        if len(files) <= STREAM_MAX_FILES:
            if is_dir:
                os.makedirs(staged, 0o750)
            hashes = self._stream(what, [(source + '/' + rel if is_dir else source,
                                          os.path.join(staged, rel) if is_dir else staged, rel) for rel in files])
        elif is_dir:
            self._must('download of %s' % what, 'copy', source + '/', staged + '/')
        else:
            self._must('download of %s' % what, 'copyto', source, staged)
        with open(os.path.join(staged, MANIFEST_NAME) if is_dir else staged + MANIFEST_NAME, 'w') as handle:
            handle.write(text)
        return {'staged': staged, 'step': step, 'name': name, 'is_dir': is_dir, 'bytes': latest.get('bytes'),
                'hashes': hashes}

    def _stream(self, what, jobs):
        """``rclone cat`` each object into its file, hashing the bytes as they are written, ``transfers`` at a time.
        Returns ``{relative path: {size, sha256}}``; StoreError naming the first object that failed (the ones not
        started yet are not)."""
        with ThreadPoolExecutor(min(self.transfers, len(jobs)) or 1) as pool:
            started = [(pool.submit(self._cat_into, remote, local), remote, rel) for remote, local, rel in jobs]
            results = {}
            for future, remote, rel in started:
                try:
                    results[rel] = future.result()
                except (StoreError, OSError) as exc:
                    for later, _remote, _rel in started:
                        later.cancel()
                    raise StoreError('download of %s (%s) failed: %s' % (what, remote, exc))
        return results

    def _cat_into(self, remote, local):
        parent = os.path.dirname(local)
        try:
            os.makedirs(parent, 0o750)
        except OSError:
            if not os.path.isdir(parent):  # made meanwhile by another worker: fine; anything else is not
                raise
        digest, size = hashlib.sha256(), 0
        argv = [self.rclone, 'cat', remote] + self._options()
        env = dict(os.environ, LC_ALL='C', LANG='C')
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            raise self._missing(exc)
        box = {}
        reader = threading.Thread(target=lambda: box.update(err=proc.stderr.read()), name='rclone-stderr')
        reader.start()
        try:
            with open(local, 'wb') as handle:
                while True:
                    block = proc.stdout.read(CHUNK)
                    if not block:
                        break
                    digest.update(block)
                    handle.write(block)
                    size += len(block)
        finally:
            proc.stdout.close()
            rc = proc.wait()
            reader.join()
        if rc != 0:
            raise StoreError('rclone exit %s: %s' % (rc, (box.get('err') or b'').decode('utf-8', 'replace').strip()[-600:]))
        return {'size': size, 'sha256': digest.hexdigest()}


def _manifest_files(text, name, is_dir, where):
    """The relative paths a stored manifest names, each checked to stay inside the checkpoint (the bucket is not
    trusted: a name like ``../x`` would write outside the staging directory)."""
    try:
        files = json.loads(text)['files']
    except (ValueError, KeyError, TypeError):
        raise StoreError('%s is not a checkpoint manifest: %r' % (where, text[:200]))
    if not isinstance(files, dict) or not files:
        raise StoreError('%s names no files' % where)
    for rel in files:
        parts = str(rel).split('/')
        if not is_dir and rel != name or is_dir and (
                str(rel).startswith('/') or any(p in ('', '.', '..') for p in parts) or '\\' in str(rel)):
            raise StoreError('%s names %r, not a file of %s: refused' % (where, rel, name))
    return sorted(files)
