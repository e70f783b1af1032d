# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Moving a sealed checkpoint from one node to another: one small abstract class, one factory.

- :class:`RsyncPush`: the source pushes to the target with rsync over SSH (node to node), optionally hard-linking
  unchanged files from a replica already on the target (``--link-dest``, the replica fast path).
- :class:`Relay`: the controller pulls from the source and pushes to the target (fleets without node-to-node SSH).
- :class:`Shared`: shared storage mounted at the same path everywhere; nothing moves.

The agent's continuous replication builds its rsync command lines with :func:`rsync_argv` too. No Ansible imports:
commands go through a ``run(argv) -> (rc, stdout, stderr)`` callable; everything is argv lists.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time

from ._checkpoint import MANIFEST_NAME

__metaclass__ = type

KINDS = ('rsync', 'relay', 'shared')


class TransferError(Exception):
    """A transfer failed; the message names the checkpoint, the target and the tool's own words."""

    def __init__(self, message, **details):
        super(TransferError, self).__init__(message)
        self.details = details


def rsync_rsh(argv):
    """``argv`` as one ``rsync --rsh`` string: rsync splits it on spaces itself and honours single or double quotes
    (no backslashes), so an argument with a space is quoted with whichever quote it does not contain."""
    words = []
    for arg in argv:
        if not any(c in arg for c in ' \'"'):
            words.append(arg)
        elif "'" not in arg:
            words.append("'%s'" % arg)
        elif '"' not in arg:
            words.append('"%s"' % arg)
        else:
            raise ValueError('ssh argument %r has both quote characters; rsync --rsh cannot carry it' % arg)
    return ' '.join(words)


# OpenSSH's own ciphers with AES-GCM first: with AES-NI it moves a checkpoint about a third faster than the default
# chacha20-poly1305 (1 GiB node to node on the bench fleet: 3.6-3.9 s against 5.3-8.2 s); a server that accepts the
# defaults accepts one of these. Modules take it as their ``ssh_ciphers`` default; empty leaves ssh's own choice.
PREFERRED_CIPHERS = ('aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,'
                     'aes128-ctr,aes192-ctr,aes256-ctr')


def check_ciphers(ciphers):
    """``ciphers`` when it is a comma-separated list of cipher names (or empty); TransferError otherwise."""
    if ciphers and not re.match(r'^[A-Za-z0-9][A-Za-z0-9@._-]*(,[A-Za-z0-9][A-Za-z0-9@._-]*)*$', ciphers):
        raise TransferError('ssh_ciphers must be a comma-separated list of cipher names, not %r' % (ciphers,))
    return ciphers


def with_ciphers(ssh, ciphers):
    """``ssh`` (an argv list) asking for ``ciphers`` in that order; unchanged when ``ciphers`` is empty."""
    if not check_ciphers(ciphers):
        return list(ssh)
    return [ssh[0], '-c', ciphers] + list(ssh[1:])


def rsync_argv(sources, dest, ssh, link_dest=None, bwlimit=0, prefix=(), partial=False, extra=(), ciphers=None):
    """The one rsync command line: whole files (checkpoints do not delta-compress), archive mode, the destination's
    parents made, SSH given as an argv list (asking for ``ciphers`` when given). ``link_dest``: hard-link files
    unchanged to the nanosecond from there."""
    argv = list(prefix) + ['rsync', '--archive', '--whole-file', '--mkpath']
    if partial:
        argv.append('--partial')
    argv += ['--rsh', rsync_rsh(with_ciphers(ssh, ciphers))]
    if int(bwlimit or 0) > 0:
        argv.append('--bwlimit=%d' % int(bwlimit))
    if link_dest:
        argv += ['--modify-window=-1', '--link-dest=%s' % link_dest]
    return argv + list(extra) + list(sources) + [dest]


def checkpoint_files(checkpoint, is_dir):
    """What moves for one sealed checkpoint: a directory as its contents; a file with its manifest beside it."""
    if is_dir:
        return [checkpoint.rstrip('/') + '/']
    return [checkpoint, checkpoint + MANIFEST_NAME]


def staged_path(staging, checkpoint):
    """Where ``checkpoint`` lands in a target's staging directory."""
    return os.path.join(staging, os.path.basename(checkpoint.rstrip('/')))


class Endpoint:
    """A node as an SSH destination: ``ssh`` argv (without the host), the host to give it, the node's checkpoint
    root."""

    def __init__(self, host, ssh, root=None, name=None):
        self.host = host
        self.ssh = list(ssh)
        self.root = root
        self.name = name or host


_PROGRESS2 = re.compile(r'^\s*([\d,]+)\s+(\d+)%\s+(\S+/s)')


def parse_progress(line):
    """rsync ``--info=progress2``'s running total (``1,234,567  45%  12.34MB/s  0:00:05``) as ``(bytes, percent,
    rate)``, or None for any other line."""
    match = _PROGRESS2.match(line)
    if not match:
        return None
    return int(match.group(1).replace(',', '')), int(match.group(2)), match.group(3)


def stream_command(argv, on_line, timeout=None, until=None, clock=time.time):
    """Run ``argv`` (no shell, ``LC_ALL=C``), handing each line of its output to ``on_line`` as it comes (rsync ends
    its progress lines with a carriage return). ``on_line`` returning True, or the clock passing ``until`` (epoch
    seconds; a watchdog, so a stalled command is stopped too), kills the command. Returns ``(rc, stdout, stderr)``
    like a module's run_command."""
    env = dict(os.environ, LC_ALL='C', LANG='C')
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=err, env=env)
        watchdog = None
        if until is not None:
            watchdog = threading.Timer(max(0.0, float(until) - clock()), proc.kill)
            watchdog.daemon = True
            watchdog.start()
        out, pending = [], b''
        started = time.time()
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, 'read1') else proc.stdout.read(4096)
            if not chunk:
                break
            pending += chunk
            parts = re.split(b'[\r\n]', pending)
            pending = parts.pop()
            stop = False
            for part in parts:
                text = part.decode('utf-8', 'replace')
                out.append(text)
                stop = on_line(text) or stop
            if stop or (timeout and time.time() - started > timeout):
                proc.kill()
                break
        rc = proc.wait()
        if watchdog is not None:
            watchdog.cancel()
        err.seek(0)
        return rc, '\n'.join(out[-200:] + [pending.decode('utf-8', 'replace')]), err.read().decode('utf-8', 'replace')


# A transfer with a deadline is judged by its rate over at least this many seconds, counted from its first bytes
# (before them: the SSH handshake and the remote rsync starting, which say nothing about the rate), and given up only
# when it is predicted to end this much after the window: a copy that would make it is never given up on a guess.
SLOW_AFTER = 2.0
SLOW_SLACK = 1.0


def projected_end(done, total, first, now):
    """When a transfer of ``total`` bytes will end (epoch seconds) at its rate since ``first`` (``(epoch, bytes)`` of
    its first report with bytes moved), now that it has moved ``done``; None before there is a rate."""
    if not total or first is None:
        return None
    elapsed, moved = now - first[0], done - first[1]
    if elapsed <= 0 or moved <= 0:
        return None
    return now + max(0, total - done) * elapsed / float(moved)


class Transfer:
    """Moves one sealed checkpoint into a staging directory on a target. ``send`` returns
    ``{'staged', 'bytes', 'seconds', 'linked_from'}`` or raises :class:`TransferError`."""

    kind = None

    def send(self, checkpoint, is_dir, size, target, staging, link_dest=None):
        raise NotImplementedError


class RsyncPush(Transfer):
    """Node to node: runs on the source."""

    kind = 'rsync'

    def __init__(self, run, timeout=None, ciphers=None, progress=None, bwlimit=0):
        self.run = run
        self.timeout = timeout
        self.ciphers = ciphers
        self.progress = progress
        self.bwlimit = int(bwlimit or 0)  # progress(checkpoint, bytes_done, total, percent, rate): rsync's running total

    def replica_checkpoint(self, target, root):
        """The newest published replica's checkpoint path on ``target`` (its ``latest.json``), or None. One SSH
        command with a quoted, validated path, no Ansible round trip."""
        argv = list(target.ssh) + [target.host, 'cat -- %s' % shlex.quote(os.path.join(root, 'latest.json'))]
        rc, out, _err = self.run(argv)
        if rc != 0:
            return None
        try:
            latest = json.loads(out)
        except ValueError:
            return None
        path = latest.get('checkpoint') if isinstance(latest, dict) else None
        return path if isinstance(path, str) and path.startswith(root.rstrip('/') + '/') else None

    def send(self, checkpoint, is_dir, size, target, staging, link_dest=None, until=None):
        start = time.time()
        staged = staged_path(staging, checkpoint)
        sent = self._rsync(checkpoint, size, checkpoint_files(checkpoint, is_dir), target, staging, staged, is_dir,
                           link_dest, [], self.progress, until)
        return dict(sent, seconds=round(time.time() - start, 3))

    def _rsync(self, checkpoint, size, sources, target, staging, staged, is_dir, link_dest, extra, progress,
               until=None):
        """One rsync of ``sources`` into the staging directory (a directory's contents into staging/<its name>/).
        ``until``: it must end by then (epoch seconds): stopped as soon as its running total says it will not (after
        ``SLOW_AFTER`` seconds of it) or when the time has come - TransferError with ``too_slow``."""
        dest = '%s:%s/' % (target.host, staged if is_dir else staging)
        # A directory's contents go into staging/<its name>/ so that --link-dest can point at a replica's own
        # checkpoint directory, whatever its name.
        linked = link_dest if link_dest and is_dir else (os.path.dirname(link_dest) if link_dest else None)
        watch = progress is not None or until is not None
        extra = list(extra) + (['--info=progress2', '--no-inc-recursive', '--outbuf=N'] if watch else [])
        argv = rsync_argv(sources, dest, target.ssh, link_dest=linked, partial=True, ciphers=self.ciphers, extra=extra,
                          bwlimit=self.bwlimit)
        verdict = {}
        if watch:
            first = []

            def on_line(line):
                seen = parse_progress(line)
                if not seen:
                    return False
                if progress is not None:
                    progress(checkpoint, seen[0], size, seen[1], seen[2])
                now = time.time()
                if not first and seen[0] > 0:
                    first.append((now, seen[0]))
                    return False
                late = projected_end(seen[0], size, first[0] if first else None, now)
                if until is not None and late is not None and now - first[0][0] >= SLOW_AFTER and \
                        late > until + SLOW_SLACK:
                    verdict['projected'] = late
                    return True
                return False
            rc, out, err = stream_command(argv, on_line, self.timeout, until=until)
            if until is not None and rc != 0 and (verdict or time.time() >= until):
                raise TransferError('rsync of %s to %s was too slow for the window: %s' % (
                    checkpoint, target.name, 'it would have ended %.1f s after it' % (verdict['projected'] - until)
                    if verdict else 'not done when the window closed'), too_slow=True, target=target.name)
        else:
            rc, out, err = self.run(argv)
        if rc != 0:
            raise TransferError('rsync of %s to %s:%s failed (exit %s): %s'
                                % (checkpoint, target.name, staging, rc, (err or out).strip()[-600:]),
                                rc=rc, target=target.name, argv=argv)
        return {'staged': staged, 'bytes': size, 'linked_from': linked, 'kind': self.kind}

    def discard(self, target, staging):
        """Remove a staging directory on ``target`` (a copy given up for the replica there); best effort, one SSH
        command with a quoted path the caller has checked."""
        self.run(list(target.ssh) + [target.host, 'rm -rf -- %s' % shlex.quote(staging)])

    def send_while_sealing(self, checkpoint, is_dir, size, target, staging, seal, link_dest=None, until=None):
        """``send`` with the hashing hidden behind the copy: the checkpoint's files go while ``seal()`` hashes them
        here and writes the manifest, then the manifest follows (one small rsync over the same SSH connection, a
        ControlMaster of this send's own). Returns ``(send's result, seal()'s result)``; a failed seal is raised once
        the copy has ended (the staged files stay unsealed: placing them fails verification)."""
        start = time.time()
        staged = staged_path(staging, checkpoint)
        control = tempfile.mkdtemp(prefix='spot-push-')
        ssh = list(target.ssh[:1]) + ['-o', 'ControlMaster=auto', '-o', 'ControlPath=%s' % os.path.join(control, 'cm'),
                                      '-o', 'ControlPersist=60'] + list(target.ssh[1:])
        via = Endpoint(target.host, ssh, target.root, target.name)
        data = [checkpoint.rstrip('/') + '/'] if is_dir else [checkpoint]
        box = {}

        def copy():
            try:
                box['sent'] = self._rsync(checkpoint, size, data, via, staging, staged, is_dir, link_dest,
                                          ['--exclude=/' + MANIFEST_NAME, '--exclude=/.%s.*.tmp' % MANIFEST_NAME] if is_dir else [], self.progress, until)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
                box['error'] = exc
        worker = threading.Thread(target=copy, name='rsync')
        worker.start()
        try:
            try:
                sealed = seal()
            finally:
                worker.join()
            if 'error' in box:
                raise box['error']
            manifest = os.path.join(checkpoint, MANIFEST_NAME) if is_dir else checkpoint + MANIFEST_NAME
            self._rsync(checkpoint, size, [manifest], via, staging, staged, is_dir, None, [], None)
        finally:
            self.run(list(ssh) + ['-O', 'exit', target.host])
            shutil.rmtree(control, ignore_errors=True)
        sent = dict(box['sent'], seconds=round(time.time() - start, 3))
        return sent, sealed


class Relay(Transfer):
    """Through the controller: runs there; pulls from ``source`` into a private temporary directory, pushes on."""

    kind = 'relay'

    def __init__(self, run, source, ciphers=None):
        self.run = run
        self.source = source
        self.ciphers = ciphers

    def _rsync(self, argv, checkpoint, target):
        rc, out, err = self.run(argv)
        if rc != 0:
            raise TransferError('relay of %s (%s -> controller -> %s) failed (exit %s): %s'
                                % (checkpoint, self.source.name, target.name, rc, (err or out).strip()[-600:]),
                                rc=rc, target=target.name)

    def send(self, checkpoint, is_dir, size, target, staging, link_dest=None):
        start = time.time()
        tmp = tempfile.mkdtemp(prefix='spot-relay-')
        try:
            name = os.path.basename(checkpoint.rstrip('/'))
            pulled = ['%s:%s' % (self.source.host, p.rstrip('/')) for p in checkpoint_files(checkpoint, is_dir)]
            self._rsync(rsync_argv(pulled, tmp + '/', self.source.ssh, partial=True, ciphers=self.ciphers),
                        checkpoint, target)
            here = [os.path.join(tmp, n) for n in sorted(os.listdir(tmp))]
            if not here:
                raise TransferError('relay of %s: nothing was pulled from %s' % (checkpoint, self.source.name))
            self._rsync(rsync_argv(here, '%s:%s/' % (target.host, staging), target.ssh, partial=True,
                                   ciphers=self.ciphers), checkpoint, target)
            return {'staged': os.path.join(staging, name), 'bytes': size, 'seconds': round(time.time() - start, 3),
                    'linked_from': None, 'kind': self.kind}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class Shared(Transfer):
    """Shared storage: the checkpoint is already where the target will read it."""

    kind = 'shared'

    def send(self, checkpoint, is_dir, size, target, staging, link_dest=None):
        return {'staged': checkpoint, 'bytes': 0, 'seconds': 0.0, 'linked_from': None, 'kind': self.kind}


def create_transfer(kind, run, source=None, timeout=None, ciphers=None, progress=None, bwlimit=0):
    """The one factory for transfers (``ciphers``: see :data:`PREFERRED_CIPHERS`; ``progress``: see RsyncPush;
    ``bwlimit``: KiB/s, rsync's ``--bwlimit``, 0 for none)."""
    check_ciphers(ciphers)  # a bad list fails here, before anything is stopped or sent
    if kind == 'rsync':
        return RsyncPush(run, timeout, ciphers, progress, bwlimit)
    if kind == 'relay':
        if source is None:
            raise TransferError('transfer relay needs the source node as an endpoint')
        return Relay(run, source, ciphers)
    if kind == 'shared':
        return Shared()
    raise TransferError('transfer must be one of %s, not %r' % (', '.join(KINDS), kind))
