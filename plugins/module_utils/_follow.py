# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Continuous replication from the node itself: the eviction agent follows each workload's checkpoint directory and
copies every new complete checkpoint to the workload's replica node as soon as it is written.

The watcher decides where (the replica node it reserved, in its signed heartbeat acknowledgement); the agent only
copies. One checkpoint: hard-linked hold of the newest complete checkpoint, sealed there (``_replica.hold``) ->
``rsync --whole-file`` into ``<root>/.incoming-<step>-<id>/`` on the replica node (unchanged files of a directory
checkpoint hard-linked from the previous replica with ``--link-dest``) -> ``publish`` there: verified against the
manifest and renamed into ``step-<step>`` (``python3 -`` over SSH with this collection's replica code on stdin, so
the replica node needs nothing installed). A failed copy is discarded and the previous replica stays.

Copying runs at low priority (``nice``/``ionice``) in its own thread and never touches the job's own directory, so
the job's checkpointing is not slowed; a node that has received a notice stops following (the migration moves the
emergency checkpoint). Standard library only.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import shutil
import tempfile
import threading
import time

from . import _objstore as objstore
from . import _replica as rep
from ._checkpoint import MANIFEST_NAME, CheckpointError
from ._common import Warning_
from ._workload import run_argv

__metaclass__ = type

REMOTE_MODULES = ('_common', '_notice', '_checkpoint', '_replica')
PLAN_KEYS = ('workload', 'checkpoint_dir', 'host', 'root', 'ssh')
_BOOT = '''
import json, sys, types
pkg = types.ModuleType('spot_remote')
pkg.__path__ = []
sys.modules['spot_remote'] = pkg
for name, source in SOURCES:
    mod = types.ModuleType('spot_remote.' + name)
    mod.__package__ = 'spot_remote'
    sys.modules['spot_remote.' + name] = mod
    setattr(pkg, name, mod)
    exec(compile(source, name + '.py', 'exec'), mod.__dict__)
sys.stdout.write(json.dumps(sys.modules['spot_remote._replica'].remote_main(REQUEST)))
'''


def remote_script(request, lib_dir=None):
    """A self-contained Python program that runs ``_replica.remote_main(request)`` on another node."""
    lib_dir = lib_dir or os.path.dirname(os.path.abspath(__file__))
    sources = []
    for name in REMOTE_MODULES:
        with open(os.path.join(lib_dir, name + '.py')) as handle:
            sources.append((name, handle.read()))
    return 'SOURCES = %r\nREQUEST = %r\n%s' % (sources, request, _BOOT)


def low_priority():
    """``nice`` (and ``ionice -c 3`` where present) in front of the copy, so the job keeps the machine."""
    prefix = []
    if shutil.which('nice'):
        prefix += ['nice', '-n', '10']
    if shutil.which('ionice'):
        prefix += ['ionice', '-c', '3']
    return prefix


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


def check_plan(items):
    """The watcher's plan: a list of dicts with at least PLAN_KEYS; ``ssh`` an argv list. Raises ValueError."""
    if not isinstance(items, list):
        raise ValueError('replicate plan is %r, not a list' % (type(items).__name__,))
    plan = {}
    for item in items:
        if not isinstance(item, dict) or any(not item.get(k) for k in PLAN_KEYS):
            raise ValueError('replicate plan item %r lacks one of %s' % (item, ', '.join(PLAN_KEYS)))
        if not isinstance(item['ssh'], list) or not all(isinstance(a, str) for a in item['ssh']):
            raise ValueError('replicate plan item for %s: ssh %r is not an argv list' % (item['workload'], item['ssh']))
        rsync_rsh(item['ssh'])
        if item.get('store'):
            try:
                objstore.check_remote(item['store'])
                objstore.check_program(item.get('store_rclone') or 'rclone')
            except objstore.StoreError as exc:
                raise ValueError('replicate plan item for %s: %s' % (item['workload'], exc))
        plan[item['workload']] = item
    return plan


class Follower:
    """Follows the workloads of the watcher's plan; ``tick`` copies what is new. ``report`` is what heartbeats
    carry. ``run`` is the same as a loop, in its own thread."""

    def __init__(self, log, poll=0.5, run=run_argv, clock=time.time, timeout=3600.0, notify=None):
        self.log = log
        self.poll = float(poll)
        self.run_cmd = run
        self.clock = clock
        self.timeout = float(timeout)
        self.notify = notify or (lambda: None)
        self.lock = threading.Lock()
        self.plan = {}
        self.status = {}
        self.paused = None
        self.prefix = low_priority()
        self.control_dir = None

    def _ssh(self, item):
        """The plan's ssh argv with a kept-open connection (ControlPersist): a copy every few seconds must not pay
        for a new SSH handshake twice each time. The socket directory is short (socket paths are limited)."""
        if self.control_dir is None:
            self.control_dir = tempfile.mkdtemp(prefix='spot-f-')
        return [item['ssh'][0], '-o', 'ControlMaster=auto', '-o', 'ControlPersist=120',
                '-o', 'ControlPath=%s/%%C' % self.control_dir] + list(item['ssh'][1:])

    def close(self):
        """Close the kept-open connections."""
        if self.control_dir is not None:
            for name in os.listdir(self.control_dir):
                run_argv(['ssh', '-o', 'ControlPath=%s' % os.path.join(self.control_dir, name), '-O', 'exit', 'x'],
                         timeout=10)
            shutil.rmtree(self.control_dir, ignore_errors=True)
            self.control_dir = None

    # ------------------------------------------------------------------ the plan and what is reported
    def update(self, items):
        """A new plan from the watcher (a verified acknowledgement). A workload whose replica node or root changed
        starts again from nothing there; one no longer planned is dropped."""
        plan = check_plan(items)
        with self.lock:
            for name, item in plan.items():
                old = self.plan.get(name)
                if old is None or (old['host'], old['root']) != (item['host'], item['root']):
                    last = item.get('last_step')
                    self.status[name] = {'workload': name, 'replica': item.get('replica'), 'replica_root': item['root'],
                                         'step': int(last) if last is not None and int(last) >= 0 else None,
                                         'source_step': None, 'source_mtime': None, 'bytes': None, 'error': None,
                                         'replicated_at': None, 'seconds': None}
                status = self.status[name]
                if item.get('store') and status.get('store') != item['store']:
                    last = item.get('store_last_step')
                    status.update({'store': item['store'], 'store_error': None, 'store_at': None,
                                   'store_seconds': None, 'store_bytes': None,
                                   'store_step': int(last) if last is not None and int(last) >= 0 else None})
            for name in set(self.status) - set(plan):
                del self.status[name]
            self.plan = plan

    def pause(self, why):
        """Stop copying (a notice: the migration moves the emergency checkpoint now)."""
        if self.paused is None:
            self.log('replication paused: %s' % why)
        self.paused = why

    def resume(self):
        """Copy again (the notice is gone: cancelled, or the node survived it)."""
        if self.paused is not None:
            self.log('replication resumed: no notice any more')
        self.paused = None

    def report(self):
        with self.lock:
            return [dict(s) for s in sorted(self.status.values(), key=lambda s: s['workload'])]

    # ------------------------------------------------------------------ copying
    def _remote(self, item, request):
        python = item.get('python') or 'python3'
        argv = self._ssh(item) + [item['host'], python, '-']
        rc, out, err = self.run_cmd(argv, stdin=remote_script(request), timeout=min(self.timeout, 600.0))
        try:
            result = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        except ValueError:
            result = None
        if rc != 0 or not isinstance(result, dict):
            return {'failed': True, 'msg': 'replica node %s: exit %s: %s' % (item['host'], rc, (err or out).strip()[-400:])}
        return result

    def follow_one(self, item):
        """Copy the workload's newest complete checkpoint if it is newer than its replica. Returns True when a new
        replica was published; errors are recorded (and reported), never raised."""
        name = item['workload']
        with self.lock:
            status = self.status[name]
            last = status['step']
        hold_dir = os.path.join(os.path.dirname(item['checkpoint_dir'].rstrip('/')), '.spot-following', name)
        start = self.clock()
        try:
            held = rep.hold(item['checkpoint_dir'], hold_dir, after_step=last if last is not None else -1)
        except (rep.ReplicaError, CheckpointError, OSError) as exc:
            return self._failed(name, 'no checkpoint to replicate in %s: %s' % (item['checkpoint_dir'], exc))
        with self.lock:
            status['source_step'], status['source_mtime'] = held['step'], held['mtime']
        if held['held'] is None:
            return False
        root = item['root'].rstrip('/')
        name_now = os.path.basename(held['held'].rstrip('/'))
        if held['is_dir']:  # the directory's contents into <incoming>/<its name>/, so --link-dest can match files
            sources, dest = [held['held'].rstrip('/') + '/'], '%s:%s/%s/%s/' % (item['host'], root, held['incoming'], name_now)
        else:
            sources, dest = held['files'], '%s:%s/%s/' % (item['host'], root, held['incoming'])
        argv = self.prefix + ['rsync', '--archive', '--whole-file', '--mkpath', '--rsh', rsync_rsh(self._ssh(item))]
        if int(item.get('bwlimit') or 0) > 0:
            argv.append('--bwlimit=%d' % int(item['bwlimit']))
        rc = 0
        if held['is_dir'] and last is not None and status.get('name') and status['error'] is None:
            # Shards that did not change (same name, size and time to the nanosecond: --modify-window=-1) are
            # hard-linked from the previous replica. Manifests are left out of that pass and sent by the next. The
            # manifest check on the replica node still covers every byte; after a failed copy no links are made.
            options = ['--modify-window=-1', '--exclude=' + MANIFEST_NAME,
                       '--link-dest=%s/step-%d/%s' % (root, last, status['name'])]
            rc, out, err = self.run_cmd(argv + options + sources + [dest], timeout=self.timeout)
        if rc == 0:
            rc, out, err = self.run_cmd(argv + sources + [dest], timeout=self.timeout)
        if rc != 0:
            shutil.rmtree(hold_dir, ignore_errors=True)
            self._remote(item, {'action': 'discard', 'root': item['root'], 'incoming': held['incoming']})
            return self._failed(name, 'copy of step %s to %s failed (rsync exit %s): %s'
                                % (held['step'], item['host'], rc, (err or out).strip()[-400:]))
        result = self._remote(item, {'action': 'publish', 'root': item['root'], 'incoming': held['incoming'],
                                     'step': held['step'], 'keep': int(item.get('keep') or 2)})
        if result.get('failed'):
            shutil.rmtree(hold_dir, ignore_errors=True)
            return self._failed(name, 'step %s not published on %s: %s' % (held['step'], item['host'], result.get('msg')))
        with self.lock:
            status.update({'step': int(held['step']), 'bytes': held['bytes'], 'error': None,
                           'replicated_at': self.clock(), 'seconds': round(self.clock() - start, 3),
                           'replica_mtime': held['mtime'], 'name': name_now})
        if item.get('store'):
            self._to_store(item, held, status)
        shutil.rmtree(hold_dir, ignore_errors=True)
        return True

    def _to_store(self, item, held, status):
        """The same held, sealed checkpoint into the object store (after the node replica: that one is the fast
        path, the store the one a lost zone does not take along). A failure is recorded, the node replica stands."""
        store = objstore.Store(lambda argv: self.run_cmd(argv, timeout=self.timeout), item['store'],
                               transfers=int(item.get('store_transfers') or 4), bwlimit=int(item.get('bwlimit') or 0),
                               rclone=item.get('store_rclone') or 'rclone')
        try:
            done = store.upload(item['workload'], held['held'], held['is_dir'], int(held['step']),
                                keep=int(item.get('store_keep') or item.get('keep') or 2), clock=self.clock)
        except (objstore.StoreError, OSError, ValueError) as exc:
            with self.lock:
                if status.get('store_error') != str(exc):
                    self.log(Warning_('replication of %s to %s: %s' % (item['workload'], item['store'], exc)))
                status['store_error'] = str(exc)
            return
        with self.lock:
            status.update({'store_step': done['step'], 'store_bytes': done['bytes'], 'store_error': None,
                           'store_at': self.clock(), 'store_seconds': done['seconds']})

    def _failed(self, name, error):
        with self.lock:
            status = self.status.get(name)
            if status is not None:
                if status['error'] != error:
                    self.log(Warning_('replication of %s: %s' % (name, error)))
                status['error'] = error
        return False

    def tick(self):
        """One pass over the plan. Returns the workloads that got a new replica."""
        if self.paused is not None:
            return []
        with self.lock:
            items = list(self.plan.values())
        done = [item['workload'] for item in items if item['workload'] in self.status and self.follow_one(item)]
        if done:
            self.notify()
        return done

    def run(self, stopping):
        try:
            while not stopping.is_set():
                try:
                    self.tick()
                except Exception as exc:  # noqa: BLE001 - a bug in one pass must not end replication for good
                    self.log(Warning_('replication pass failed: %s: %s' % (type(exc).__name__, exc)))
                stopping.wait(self.poll)
        finally:
            self.close()
