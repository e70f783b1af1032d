# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A migration as a handful of coarse, idempotent steps (the modules migration_source and migration_target are thin
shells over these):

- source ``checkpoint``: list the workloads to move and ask each for an emergency checkpoint (all at once), within the
  deadline; nothing is stopped yet (a migration without a target must leave the job running);
- source ``release``: stop each workload, take its newest complete checkpoint, seal it with a manifest and push it to
  its target's staging directory (one :mod:`_transfer` call); a workload whose checkpoint cannot be sealed is started
  again where it was;
- target ``place``: verify the staged copy against its manifest, rename it into place, start the workload from it;
- target ``progress``: wait for a checkpoint with a step beyond the resumed one.

Every result carries ``migration``: ``{id, step, source, workloads: {name: {...}}}``, the data the watcher follows
(never task names). No Ansible imports: commands go through ``run(argv) -> (rc, stdout, stderr)``.
"""

from __future__ import absolute_import, division, print_function

import os
import re
import shutil
import threading
import time
import uuid

from ._common import write_json_atomic
from ._gpu import gpu_facts
from ._checkpoint import CheckpointError, find_checkpoint, read_manifest, seal, verify, wait_for_checkpoint
from ._transfer import Endpoint, TransferError, create_transfer
from ._workload import (RUNTIMES, WorkloadError, build_spec, check_fence, create_driver, ensure_absent,
                        ask_checkpoint, await_checkpoint, ensure_checkpointed, ensure_started,
                        ensure_stopped, public)

__metaclass__ = type

ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,159}$')
STAGING = '.spot-staging'
SPEC_PARAMS = ('name', 'runtime', 'image', 'command', 'args', 'resume_arg', 'env', 'volumes', 'checkpoint_dir',
               'checkpoint_signal', 'checkpoint_command', 'workdir', 'gang')


class MigrationError(Exception):
    """A step failed; the message names the workload, the node or the value at fault and what to do."""

    def __init__(self, message, **details):
        super(MigrationError, self).__init__(message)
        self.details = details


def iso(epoch=None):
    epoch = time.time() if epoch is None else epoch
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(epoch)) + '.%06dZ' % int((epoch % 1) * 1e6)


# ---------------------------------------------------------------------------- values that become paths

def check_id(value, what='migration_id'):
    """An id that becomes one path component (staging directory, record name): letters, digits and ``._:+-``, never
    ``..``, never a separator. Raises MigrationError naming the value."""
    text = '' if value is None else str(value)
    if not ID_RE.match(text) or '..' in text:
        raise MigrationError('%s %r is not allowed: it becomes a directory name, so use letters, digits and "._:+-" '
                             '(up to 160, starting with a letter or digit, no "..")' % (what, text), value=text)
    return text


def check_root(path, what='checkpoint root'):
    """An absolute directory path without ``..`` components; returned normalised."""
    text = '' if path is None else str(path)
    if not text.startswith('/') or '..' in text.split('/') or '\0' in text:
        raise MigrationError('%s %r must be an absolute path without ".." components' % (what, text), value=text)
    return os.path.normpath(text)


def inside(root, path, what='path'):
    """``path`` resolved (symlinks followed) must stay under ``root`` resolved; returns the normalised path."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip('/') + '/'):
        raise MigrationError('%s %s resolves to %s, outside %s: refusing to write or remove it'
                             % (what, path, real, real_root), path=path, root=root)
    return os.path.normpath(path)


def staging_dir(root, migration_id):
    """``<root>/.spot-staging/<migration id>``, checked to stay under ``root``."""
    root = check_root(root)
    return inside(root, os.path.join(root, STAGING, check_id(migration_id)), 'staging directory')


def _rebase(value, old, new):
    if isinstance(value, dict):
        return dict((k, _rebase(v, old, new)) for k, v in value.items())
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, str):
        if value == old:
            return new
        if value.startswith(old + '/'):
            return new + value[len(old):]
        if '=' in value:
            # --flag=/old/root/x
            head, _sep, tail = value.partition('=')
            if tail == old or tail.startswith(old + '/'):
                return head + '=' + new + tail[len(old):]
    return value


def rebase(value, old, new):
    """Every string in ``value`` that is ``old``, starts with ``old/`` or is ``--flag=old/...`` moved under ``new``
    (a workload spec from one node's checkpoint root to another's). An empty or equal ``old`` changes nothing."""
    old = (old or '').rstrip('/')
    new = (new or '').rstrip('/')
    if not old or old == new:
        return value
    return _rebase(value, old, new)


# ---------------------------------------------------------------------------- workloads

def drivers(run, which, workload_root=None, container_cli=None, runtimes=None, warn=None):
    """{runtime: driver} for the runtimes present on this node (process always)."""
    found = {}
    for runtime in runtimes or RUNTIMES:
        if runtime != 'process' and not runtimes and not (container_cli or which(runtime)):
            continue
        try:
            found[runtime] = create_driver(runtime, run, which, workload_root, container_cli)
        except WorkloadError as exc:
            if warn:
                warn('%s not usable: %s' % (runtime, exc))
    return found


def list_workloads(by_runtime, warn=None):
    """Every workload on the node, with its spec: ``[{name, runtime, running, spec, ...}]``."""
    out = []
    for runtime, driver in sorted(by_runtime.items()):
        try:
            names = driver.names()
        except WorkloadError as exc:
            if warn:
                warn('%s not listed: %s' % (runtime, exc))
            continue
        for name in names:
            state = driver.status(name)
            if state:
                out.append(public(state, keep_spec=True))
    return out


def _parallel(func, items):
    """``func(item)`` for every item at once (threads); results in order. Exceptions are returned, not raised."""
    results = [None] * len(items)

    def one(index, item):
        try:
            results[index] = func(item)
        except Exception as exc:  # noqa: BLE001 - reported per item by the caller
            results[index] = exc
    threads = [threading.Thread(target=one, args=(i, item)) for i, item in enumerate(items)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# ---------------------------------------------------------------------------- source: checkpoint

def source_checkpoint(by_runtime, migration_id, source, names, include_stopped, deadline, safety_margin, signalled_at,
                      check_mode, warn=None, wait=True):
    """Choose the workloads to move and ask each running one for an emergency checkpoint, all at once, within
    ``deadline - safety_margin`` seconds. Nothing is stopped.

    ``wait=False``: ask and return at once (step ``checkpointing``), so the targets are chosen and reserved while
    the checkpoints are written; each row says when it was asked and until when its checkpoint counts
    (``emergency_signalled_at``, ``emergency_until``, epoch seconds on this node) and ``source_release`` waits for
    it there. ``wait=True``: return when every one is complete or late (step ``checkpointed``)."""
    migration_id = check_id(migration_id)
    found = list_workloads(by_runtime, warn)
    # A gang's member moves with its gang (spot.migration.migrate_gang): moved alone, its peers would hang.
    gangs = dict((w['name'], w['spec']['gang']['name']) for w in found if (w.get('spec') or {}).get('gang'))
    wanted = list(names or [])
    if [n for n in wanted if n in gangs]:
        raise MigrationError('%s on %s: a member of a gang moves with its gang - run spot.migration.migrate_gang '
                             '-e gang=%s -e source=%s' % (', '.join(n for n in wanted if n in gangs), source,
                                                          gangs[[n for n in wanted if n in gangs][0]], source))
    found = [w for w in found if w['name'] not in gangs]
    if gangs and warn:
        warn('left to spot.migration.migrate_gang: %s' % ', '.join('%s (gang %s)' % i for i in sorted(gangs.items())))
    if wanted:
        moving = [w for w in found if w['name'] in wanted and (w['running'] or include_stopped)]
        missing = [n for n in wanted if n not in [w['name'] for w in moving]]
        if missing:
            raise MigrationError('not %s on %s: %s (running: %s)'
                                 % ('here' if include_stopped else 'running', source, ', '.join(missing),
                                    ', '.join(w['name'] for w in found if w['running']) or 'none'), missing=missing)
    else:
        moving = [w for w in found if w['running']]
    budget = max(float(deadline) - float(safety_margin), 1.0)
    until = time.time() + budget

    def ask(w):
        if not w['running']:
            return None
        driver = by_runtime[w['runtime']]
        if wait:
            return ensure_checkpointed(driver, w['name'], check_mode, deadline=budget, signalled_at=signalled_at)
        return ask_checkpoint(driver, w['name'], check_mode, signalled_at=signalled_at)
    answers = _parallel(ask, moving)
    rows = {}
    for w, answer in zip(moving, answers):
        if isinstance(answer, Exception):
            rows[w['name']] = {'emergency_ok': False, 'emergency_error': str(answer)}
        elif answer is None:
            rows[w['name']] = {'emergency_ok': False, 'emergency_error': 'already stopped (an earlier run stopped it)'}
        elif answer.get('checkpoint') or wait or check_mode:
            ckpt = answer.get('checkpoint') or {}
            rows[w['name']] = {'emergency_ok': bool(ckpt) or check_mode, 'emergency_step': ckpt.get('step'),
                               'emergency_checkpoint': ckpt.get('checkpoint'), 'signal': ckpt.get('signal')}
        else:
            # Asked, not written yet: source_release waits for it until ``until``.
            rows[w['name']] = {'emergency_ok': None, 'emergency_step': None, 'emergency_checkpoint': None,
                               'signal': answer['signal'], 'emergency_signalled_at': answer['signalled_at'],
                               'emergency_until': until, 'emergency_dir': answer['directory']}
        # When the window closes (this node's clock): a copy with a fallback must end by then.
        rows[w['name']].update({'runtime': w['runtime'], 'gpus': len((w.get('spec') or {}).get('gpus') or []),
                                'window_until': until})
    return {
        'changed': any(not isinstance(a, Exception) and a is not None and a.get('changed') for a in answers),
        'moving': moving,
        'gang_members': gangs,
        'deadline': float(deadline),
        'checkpointed_at': iso(),
        'migration': {'id': migration_id, 'step': 'checkpointed' if wait else 'checkpointing', 'source': source,
                      'workloads': rows},
    }


def await_emergency(driver, name, asked, clock=time.time):
    """The answer to an emergency checkpoint asked without waiting (``source_checkpoint(wait=False)``): waits until
    the row's ``emergency_until`` for it and returns the row's ``emergency_*`` fields as ``wait=True`` would have
    set them. A row already answered comes back as it is."""
    if asked.get('emergency_ok') is not None or asked.get('emergency_signalled_at') is None:
        return dict(asked)
    out = dict((k, v) for k, v in asked.items() if k not in ('emergency_until', 'emergency_dir'))
    try:
        found = await_checkpoint(driver, name, asked['emergency_dir'], asked['emergency_signalled_at'],
                                 asked.get('signal') or 'the signal', float(asked['emergency_until']) - clock())
    except WorkloadError as exc:
        out.update({'emergency_ok': False, 'emergency_error': str(exc)})
        return out
    out.update({'emergency_ok': True, 'emergency_step': found.get('step'), 'emergency_checkpoint': found['checkpoint']})
    return out


# ---------------------------------------------------------------------------- source: release (stop, seal, push)

# A checkpoint at least this big is hashed while it is being pushed (rsync): about a second per GiB off the window.
# Below it the seal is quicker than the second small rsync that sends the manifest after the data.
SEAL_WHILE_SENDING = 64 * 1024 * 1024


def _stop_and_take(driver, workload, check_mode, stop_timeout, emergency=None, stop='auto', hard=False):
    """Stop ``workload`` and find its newest complete checkpoint. With ``stop=auto`` a workload whose emergency
    checkpoint of this run is complete is killed at once: its checkpoint is taken, and a graceful stop would only
    spend the window on a second one (most trainers checkpoint on SIGTERM) that could even be written over the
    first under the same name while it is sealed. Otherwise (no emergency checkpoint, or ``stop=graceful``) it gets
    SIGTERM and ``stop_timeout`` seconds. Returns the sealed row's fields but the seal's own."""
    directory = workload['spec'].get('checkpoint_dir')
    if not directory:
        raise MigrationError('workload %s has no checkpoint_dir: nothing to move' % workload['name'])
    emergency = emergency or {}
    emergency_taken = bool(emergency.get('emergency_ok')) and emergency.get('emergency_checkpoint') is not None
    hard = hard or (stop == 'auto' and emergency_taken)
    stopped = ensure_stopped(driver, workload['name'], check_mode, stop_timeout, hard=hard)
    newest = find_checkpoint(directory)
    return {'checkpoint': newest['checkpoint'], 'format': newest['format'], 'step': newest['step'],
            'bytes': newest['size_bytes'], 'is_dir': os.path.isdir(newest['checkpoint']),
            'stopped_by': stopped.get('stopped_by')}


def _seal_taken(taken, check_mode):
    """Seal a checkpoint found by _stop_and_take; the row's seal fields."""
    sealed = seal(taken['checkpoint'], check_mode=check_mode, fmt=taken['format'], step=taken['step'])
    return {'sealed_changed': sealed['changed'], 'verified_at': iso()}


def _restart_here(driver, workload, check_mode, resume_from=None):
    """Start ``workload`` again on this node with its own spec (from ``resume_from`` when given): a migration that
    stopped it and could not place it anywhere must not leave the job down."""
    spec = dict(workload['spec'])
    if resume_from:
        spec['resume_from'] = resume_from
    return ensure_started(driver, spec, check_mode, recreate=True)


def endpoint(value, what):
    if not isinstance(value, dict) or not value.get('host') or not isinstance(value.get('ssh'), list):
        raise MigrationError('%s %r needs host and ssh (an argv list)' % (what, value))
    return Endpoint(value['host'], value['ssh'], value.get('root'), value.get('name'))


def push_one(transfer, row, assignment, migration_id, run, seal=None, until=None, fallback=None):
    """One checkpoint into its target's staging directory. Fills ``row`` (transfer fields); never raises for a failed
    transfer. ``seal``: seal it meanwhile (``seal() -> row fields``; rsync only), its failure raised after the copy.
    ``until`` (rsync): it must end by then; ``fallback='replica'``: a copy too slow for that is given up and the
    workload resumes from its replica instead (on the target, ``replica_root``, or in object storage, ``store``)."""
    target = endpoint(assignment, 'target of %s' % row['name'])
    root = assignment.get('root') or os.path.dirname(row['checkpoint'])
    row['target'] = target.name
    row['transfer_started_at'] = iso()
    try:
        staging = staging_dir(root, migration_id) if transfer.kind != 'shared' else os.path.dirname(row['checkpoint'])
        if transfer.kind != 'shared':
            row['staging'] = staging  # known before the copy, so a failed copy's remains can be cleaned up
        link = None
        if transfer.kind == 'rsync' and assignment.get('replica_root'):
            link = transfer.replica_checkpoint(target, check_root(assignment['replica_root'], 'replica root'))
        timed = {'until': until} if until is not None and transfer.kind == 'rsync' else {}
        if seal is not None:
            done, sealed = transfer.send_while_sealing(row['checkpoint'], row['is_dir'], row['bytes'], target, staging,
                                                       seal, link_dest=link, **timed)
            row.update(sealed)
        else:
            done = transfer.send(row['checkpoint'], row['is_dir'], row['bytes'], target, staging, link_dest=link,
                                 **timed)
    except (TransferError, MigrationError) as exc:
        if getattr(exc, 'details', {}).get('too_slow') and fallback == 'replica' and has_replica(assignment):
            transfer.discard(target, staging)
            row.pop('staging', None)
            row.update({'transfer': 'replica', 'fell_back': str(exc), 'transfer_error': None, 'staged': None,
                        'transferred_at': None})
            return row
        row.update({'transfer_error': str(exc), 'transferred_at': None, 'staged': None})
        return row
    row.update({'staged': done['staged'], 'staging': staging, 'transferred_at': iso(), 'transfer_seconds': done['seconds'],
                'linked_from': done['linked_from'], 'transfer_error': None, 'transfer': transfer.kind})
    return row


class ProgressFile:
    """Writes a running transfer's progress to ``path`` (JSON, atomically, at most every ``every`` seconds) for the
    controller to show while the step runs (the migration_source action plugin reads it); removed when done."""

    def __init__(self, path, every=0.5, clock=time.time):
        self.path, self.every, self.clock = path, every, clock
        self.workload, self.last = None, 0.0

    def __call__(self, checkpoint, done, total, percent, rate):
        now = self.clock()
        if now - self.last < self.every and percent < 100:
            return
        self.last = now
        try:
            write_json_atomic(self.path, {'workload': self.workload, 'checkpoint': checkpoint, 'bytes': done,
                                          'total': total, 'percent': percent, 'rate': rate, 'at': now})
        except (IOError, OSError):
            pass  # progress is a courtesy: never a reason for a transfer to fail

    def close(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


CHOICES = ('emergency', 'newest', 'replica')


def has_replica(assignment):
    """Whether a workload's target can resume it from a replica: one on the target (``replica_root``) or one in
    object storage (``store``, restored onto the target)."""
    return bool((assignment or {}).get('replica_root') or (assignment or {}).get('store'))


def check_choices(choices, assignments):
    """The plan's choice per workload (``{workload: {from, fallback}}``): ``from`` one of CHOICES (default
    ``emergency``), ``fallback`` None or ``replica``. A replica choice or fallback needs a replica for the workload's
    target (``replica_root`` or ``store`` in its assignment, see has_replica); without one the choice is ``newest``
    (or no fallback), said in ``choice_note``. Returns ``{workload: {from, fallback, note}}``; MigrationError naming a
    bad value."""
    out = {}
    for name, choice in (choices or {}).items():
        if not isinstance(choice, dict):
            raise MigrationError('choices %s must be {from, fallback}, not %r' % (name, choice))
        how = choice.get('from') or 'emergency'
        fallback = choice.get('fallback') or None
        if how not in CHOICES:
            raise MigrationError('choices %s: from %r is not one of %s' % (name, how, ', '.join(CHOICES)))
        if fallback not in (None, 'replica'):
            raise MigrationError('choices %s: fallback %r is not replica (or none)' % (name, fallback))
        note = None
        replica = has_replica((assignments or {}).get(name))
        if how == 'replica' and not replica:
            how, note = 'newest', 'no replica on the target: the newest complete checkpoint moves instead'
        if fallback and not replica:
            fallback, note = None, note or 'no replica on the target to fall back to'
        out[name] = {'from': how, 'fallback': fallback, 'note': note}
    return out


def source_release(by_runtime, run, migration_id, source, moving, assignments, transfer_kind, check_mode,
                   stop_timeout=30.0, emergency=None, stop='auto', ciphers=None, progress_file=None, choices=None,
                   bwlimit=0):
    """Stop, take the newest complete checkpoint, seal it and (rsync, shared) push it to the assigned target, for
    every workload in ``assignments``. A workload that cannot be sealed is started again here; one whose transfer
    failed is listed in ``failed_transfers`` (the playbook tries the next target).

    ``choices`` (the watcher's plan against the deadline, see check_choices): ``emergency`` waits for the emergency
    checkpoint (the default), ``newest`` takes the newest complete one on disk at once, ``replica`` only stops the
    workload (its target resumes it from the replica it holds); ``fallback: replica`` gives a copy up for the replica
    as soon as it cannot end within the window (``emergency_until``)."""
    migration_id = check_id(migration_id)
    choices = check_choices(choices, assignments)
    progress = ProgressFile(progress_file) if progress_file and not check_mode else None
    transfer = create_transfer(transfer_kind if transfer_kind in ('rsync', 'shared') else 'shared', run, ciphers=ciphers,
                               progress=progress, bwlimit=bwlimit)
    try:
        return _release(by_runtime, run, migration_id, source, moving, assignments, transfer_kind, check_mode,
                        stop_timeout, emergency, stop, transfer, progress, choices)
    finally:
        if progress is not None:
            progress.close()


def _release(by_runtime, run, migration_id, source, moving, assignments, transfer_kind, check_mode, stop_timeout,
             emergency, stop, transfer, progress, choices):
    by_name = dict((w['name'], w) for w in moving)
    rows, errors = {}, []
    for name in sorted(assignments):
        w = by_name.get(name)
        if w is None:
            raise MigrationError('workload %s was assigned a target but is not among those moving off %s (%s)'
                                 % (name, source, ', '.join(sorted(by_name)) or 'none'))
        driver = by_runtime[w['runtime']]
        row = {'name': name}
        choice = choices.get(name) or {'from': 'emergency', 'fallback': None, 'note': None}
        if name in choices:
            row.update({'resume_choice': choice['from'], 'choice_note': choice['note']})
        asked = (emergency or {}).get(name) or {}
        window = asked.get('window_until', asked.get('emergency_until'))  # this node's clock: deadline less margin
        if not check_mode and choice['from'] == 'emergency':
            asked = await_emergency(driver, name, asked)
        row.update((k, v) for k, v in asked.items()
                   if k.startswith('emergency_') and k not in ('emergency_until', 'emergency_dir'))
        try:
            if choice['from'] == 'replica':
                # The target holds a verified replica and resumes from it: this copy only stops, at once.
                stopped = ensure_stopped(driver, name, check_mode, stop_timeout, hard=True)
                row.update({'stopped_by': stopped.get('stopped_by'), 'checkpoint': None, 'step': None, 'bytes': 0,
                            'is_dir': None, 'transfer': 'replica', 'target': assignments[name].get('name'),
                            'staged': None, 'transfer_error': None, 'verified_at': iso()})
                rows[name] = row
                continue
            row.update(_stop_and_take(driver, w, check_mode, stop_timeout, asked, stop,
                                      hard=choice['from'] == 'newest'))
            overlap = not check_mode and transfer_kind == 'rsync' and row['bytes'] >= SEAL_WHILE_SENDING
            if not overlap:
                row.update(_seal_taken(row, check_mode))
            if check_mode or transfer_kind == 'relay':
                row.update({'target': assignments[name].get('name'), 'staged': None, 'transfer_error': None})
            else:
                if progress is not None:
                    progress.workload = name
                until = window if choice['fallback'] else None
                push_one(transfer, row, assignments[name], migration_id, run,
                         seal=(lambda: _seal_taken(row, False)) if overlap else None, until=until,
                         fallback=choice['fallback'])
        except (CheckpointError, MigrationError, WorkloadError) as exc:
            for key in ('target', 'staging', 'transfer_started_at'):  # a seal that failed while its copy went
                row.pop(key, None)
            restarted = None
            try:
                restarted = _restart_here(driver, w, check_mode)['workload']
            except WorkloadError as again:
                errors.append('%s: could not be started again on %s either: %s' % (name, source, again))
            row.update({'error': 'no checkpoint to move: %s' % exc, 'restarted_on_source': bool(restarted)})
            errors.append('%s: %s; %s' % (name, exc, 'started again on %s' % source if restarted else 'it is stopped'))
        rows[name] = row
    failed = sorted(n for n, r in rows.items() if r.get('transfer_error'))
    return {
        'changed': not check_mode and bool(rows),
        'sealed': [rows[n] for n in sorted(rows)],
        'failed_transfers': failed,
        'errors': errors,
        'migration': {'id': migration_id, 'step': 'transferred' if not failed else 'transfer_failed', 'source': source,
                      'workloads': rows},
    }


def source_transfer(run, migration_id, source, sealed, assignments, transfer_kind, source_endpoint=None, ciphers=None):
    """Move already sealed checkpoints (``sealed`` rows from ``source_release``) to ``assignments``: the relay from the
    controller, or the push to a next target after the first failed."""
    migration_id = check_id(migration_id)
    transfer = create_transfer(transfer_kind, run,
                               source=endpoint(source_endpoint, 'source') if transfer_kind == 'relay' else None,
                               ciphers=ciphers)
    rows = {}
    for row in sealed:
        if row['name'] not in assignments or row.get('error'):
            continue
        rows[row['name']] = push_one(transfer, dict(row), assignments[row['name']], migration_id, run)
    failed = sorted(n for n, r in rows.items() if r.get('transfer_error'))
    return {'changed': bool(rows), 'sealed': [rows[n] for n in sorted(rows)], 'failed_transfers': failed,
            'migration': {'id': migration_id, 'step': 'transferred' if not failed else 'transfer_failed',
                          'source': source, 'workloads': rows}}


def source_cleanup(by_runtime, migration_id, source, names, check_mode, stop_timeout=10.0):
    """After the target copy runs: nothing moved may remain here."""
    migration_id = check_id(migration_id)
    found = dict((w['name'], w) for w in list_workloads(by_runtime))
    removed = {}
    for name in names:
        w = found.get(name)
        if w is None:
            continue
        done = ensure_absent(by_runtime[w['runtime']], name, check_mode, stop_timeout)
        removed[name] = {'removed': done['changed'], 'stopped_by': done.get('stopped_by')}
    return {'changed': any(r['removed'] for r in removed.values()),
            'migration': {'id': migration_id, 'step': 'cleaned', 'source': source, 'workloads': removed}}


def source_restart(by_runtime, migration_id, source, moving, sealed, check_mode):
    """Nothing could be placed anywhere: start each stopped workload again here, from its sealed checkpoint."""
    migration_id = check_id(migration_id)
    by_name = dict((w['name'], w) for w in moving)
    rows = {}
    for row in sealed:
        w = by_name.get(row['name'])
        if w is None:
            continue
        try:
            state = _restart_here(by_runtime[w['runtime']], w, check_mode, row.get('checkpoint'))
            rows[row['name']] = {'restarted_on_source': True, 'resumed_step': row.get('step'),
                                 'workload': state['workload']}
        except WorkloadError as exc:
            rows[row['name']] = {'restarted_on_source': False, 'error': str(exc)}
    return {'changed': bool(rows) and not check_mode,
            'migration': {'id': migration_id, 'step': 'restarted_on_source', 'source': source, 'workloads': rows}}


# ---------------------------------------------------------------------------- target: place and progress

def target_spec(placement, here_root):
    """The workload's spec on this node: paths moved from the source's checkpoint root to this node's (not for
    shared storage, mounted at the same path everywhere)."""
    spec = placement.get('spec') or {}
    if placement.get('transfer') == 'shared':
        return dict(spec)
    return rebase(dict(spec), placement.get('source_root') or '', here_root or '')


def _put_in_place(staged, final, is_dir, staging, check_mode, hashes=None):
    """Verified staged copy -> final name (manifest first for a file, then the checkpoint: atomic renames on one
    file system); the staging directory removed. Idempotent: a copy already in place is verified instead.
    ``hashes``: the staged files' hashes taken as they were written (see verify)."""
    if os.path.exists(final) and not os.path.exists(staged):
        checked = verify(final)
        return checked, False
    checked = verify(staged, hashes)
    if check_mode:
        return checked, True
    parent = os.path.dirname(final)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o750)
    if not is_dir:
        os.rename(staged + '.spot-manifest.json', final + '.spot-manifest.json')
    if os.path.isdir(final) and is_dir:
        shutil.rmtree(final)  # an older copy of the same step: the verified one replaces it
    os.rename(staged, final)
    shutil.rmtree(staging, ignore_errors=True)
    return checked, True


def _from_replica(placement, final_dir, name, check_mode):
    """A lost node's workload on its replica node: the newest published replica verified again, then hard-linked
    (no bytes copied, the replica kept) into the workload's checkpoint directory."""
    from ._replica import _link_tree, info
    root = check_root(placement.get('replica_root'), 'replica_root of %s' % name)
    published = info(root)
    latest = published['latest']
    if placement.get('replica_step') is not None:  # a gang resumes every member from one step
        latest = next((r for r in published['replicas'] if r['step'] == int(placement['replica_step'])), None)
        if latest is None:
            raise MigrationError('no replica of %s of step %s in %s (it holds %s)' % (
                name, placement['replica_step'], root, [r['step'] for r in published['replicas']] or 'none'))
    if latest is None:
        raise MigrationError('no published replica of %s in %s: nothing to resume from' % (name, root))
    replica = inside(root, latest['checkpoint'], 'replica of %s' % name)
    checked = verify(replica)
    final = inside(final_dir, os.path.join(final_dir, os.path.basename(replica.rstrip('/'))), 'checkpoint of %s' % name)
    if os.path.exists(final):
        return verify(final), final, False
    if not check_mode:
        if not os.path.isdir(final_dir):
            os.makedirs(final_dir, 0o750)
        tmp = os.path.join(final_dir, '.spot-linking-%s' % os.path.basename(final))
        if os.path.lexists(tmp):
            shutil.rmtree(tmp) if os.path.isdir(tmp) else os.unlink(tmp)
        _link_tree(replica, tmp)
        if not os.path.isdir(replica):
            os.link(replica + '.spot-manifest.json', final + '.spot-manifest.json')
        os.rename(tmp, final)
    return checked, final, True


def _newest_replica(placement, final_dir, name, check_mode, run, root, migration_id):
    """A replica placement that may also name an object store (``store``): resume from the newer of the replica on
    this node and the one published in the store (the node's when they are the same step: nothing to download).
    From the store, the step ``latest.json`` names is downloaded into this node's staging directory, verified against
    its manifest and renamed into place (a torn or tampered object is refused, nothing renamed)."""
    from ._objstore import Store, StoreError
    node_latest = None
    if placement.get('replica_root'):
        from ._replica import info
        try:
            node_latest = info(check_root(placement['replica_root'], 'replica_root of %s' % name))['latest']
        except (OSError, MigrationError):
            node_latest = None
    store = Store(run, placement['store'], transfers=int(placement.get('store_transfers') or 4),
                  rclone=placement.get('store_rclone') or 'rclone')
    try:
        stored = store.latest(name)
    except StoreError as exc:
        if node_latest is None:
            raise MigrationError('no replica of %s on %s and the object store cannot be read: %s' % (name, root, exc))
        stored = None
    node_step = node_latest.get('step') if node_latest else None
    if stored is None and node_latest is None:
        raise MigrationError('no replica of %s: none published on %s%s nor in %s' % (
            name, root or final_dir, ' (%s)' % placement['replica_root'] if placement.get('replica_root') else '',
            placement['store']))
    if stored is None or (node_step is not None and int(node_step) >= int(stored['step'])):
        checked, final, moved = _from_replica(placement, final_dir, name, check_mode)
        return checked, final, moved, 'replica'
    final = inside(final_dir, os.path.join(final_dir, os.path.basename(str(stored['name']))), 'checkpoint of %s' % name)
    if os.path.exists(final):
        return verify(final), final, False, 'store'
    staging = staging_dir(root or os.path.dirname(final_dir), migration_id)
    if check_mode:
        return {'step': stored['step'], 'total_bytes': stored.get('bytes')}, final, True, 'store'
    try:
        got = store.download(name, staging, stored)
    except StoreError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise MigrationError('restoring %s from %s failed: %s' % (name, placement['store'], exc))
    try:
        checked, moved = _put_in_place(got['staged'], final, got['is_dir'], staging, check_mode, got.get('hashes'))
    except CheckpointError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return checked, final, moved, 'store'


def restore_from_store(run, store, workload, checkpoint_dir, check_mode, transfers=4, rclone='rclone'):
    """A job started from its replica in a bucket (deploy's ``restore_from``): the step ``latest.json`` names in
    ``store`` downloaded into a staging directory beside ``checkpoint_dir`` (same file system), every file verified
    against its manifest, then renamed into ``checkpoint_dir``. Idempotent: a copy already in place is verified and
    left as it is. Returns ``{changed, restored: {checkpoint, step, bytes, store}}``; MigrationError naming the value
    otherwise (nothing renamed, the staging directory removed)."""
    check_id(workload, 'workload')
    final_dir = check_root(checkpoint_dir, 'checkpoint_dir of %s' % workload)
    placement = {'store': store, 'store_transfers': transfers, 'store_rclone': rclone}
    checked, final, moved, _kind = _newest_replica(placement, final_dir, workload, check_mode, run,
                                                   os.path.dirname(final_dir.rstrip(os.sep)) or os.sep,
                                                   'restore-%s' % uuid.uuid4().hex[:12])
    return {'changed': bool(moved), 'restored': {'checkpoint': final, 'step': checked.get('step'),
                                                 'bytes': checked.get('total_bytes'), 'store': store}}


def target_place(run, which, migration_id, here, placements, here_root, check_mode, workload_root=None,
                 container_cli=None):
    """Verify, rename into place and start each workload assigned here."""
    migration_id = check_id(migration_id)
    root = check_root(here_root, 'checkpoint root of %s' % here) if here_root else None
    rows, changed = {}, False
    for p in placements:
        name = p['name']
        mid = check_id(p.get('migration_id') or migration_id)
        came_from = p.get('transfer')
        spec = target_spec(p, root)
        build_spec(dict(spec, resume_from=None))  # a bad spec fails here, before anything is renamed
        final_dir = check_root(spec.get('checkpoint_dir'), 'checkpoint_dir of %s' % name)
        if p.get('transfer') == 'shared':
            staged = final = p['checkpoint']
            checked = verify(final)
            moved = False
        elif p.get('transfer') == 'replica' and p.get('store'):
            checked, final, moved, came_from = _newest_replica(p, final_dir, name, check_mode, run, root, mid)
        elif p.get('transfer') == 'replica':
            checked, final, moved = _from_replica(p, final_dir, name, check_mode)
        else:
            staging = staging_dir(root or os.path.dirname(final_dir), mid)
            base = os.path.basename(p['checkpoint'].rstrip('/'))
            staged = os.path.join(staging, base)
            final = inside(final_dir, os.path.join(final_dir, base), 'checkpoint of %s' % name)
            if check_mode and not os.path.exists(staged):
                rows[name] = {'checkpoint': final, 'verified_at': None, 'step': p.get('step'), 'migration_id': mid,
                              'source': p.get('source')}
                changed = True
                continue
            checked, moved = _put_in_place(staged, final, p.get('is_dir'), staging, check_mode)
        verified_at = iso()
        driver = create_driver(spec.get('runtime') or 'process', run, which, workload_root, container_cli)
        unfenced = check_fence(workload_root, name, True, check_mode)
        desired = build_spec(dict((k, spec.get(k)) for k in SPEC_PARAMS if spec.get(k) is not None))
        desired.update({'resume_from': final, 'gpus': [int(g) for g in p.get('gpus') or []]})
        started_at = time.time()
        started = ensure_started(driver, desired, check_mode, recreate=False)
        changed = changed or moved or started['changed'] or unfenced
        rows[name] = {'checkpoint': final, 'step': checked.get('step', p.get('step')), 'verified_at': verified_at,
                      'started_at': iso(started_at), 'started_epoch': started_at, 'checkpoint_dir': final_dir,
                      'bytes_verified': checked.get('total_bytes'), 'workload': started.get('workload'),
                      'migration_id': mid, 'source': p.get('source'), 'owner': p.get('owner'),
                      'resumed_from_kind': came_from}
    return {'changed': changed, 'placed': rows,
            'migration': {'id': migration_id, 'step': 'started', 'target': here, 'workloads': rows}}


def target_progress(migration_id, here, placed, timeout, check_mode):
    """Wait, for every workload started here, for a complete checkpoint whose step is beyond the resumed one (a
    checkpoint a job writes at start-up, of the step it resumed from, is not progress)."""
    migration_id = check_id(migration_id)
    rows, errors = {}, []
    if check_mode:
        migration = {'id': migration_id, 'step': 'running', 'target': here, 'workloads': {}}
        return {'changed': False, 'progress': {}, 'migration': migration}
    deadline = time.time() + float(timeout)

    def beyond(name, info):
        resumed = info.get('step')
        while True:
            try:
                found = wait_for_checkpoint(info['checkpoint_dir'], wait_timeout=max(deadline - time.time(), 0.0),
                                            interval=0.2, newer_than=float(info.get('started_epoch') or 0) - 0.001)
            except CheckpointError as exc:
                raise MigrationError('%s made no progress on %s within %s s: %s' % (name, here, timeout, exc))
            if resumed is None or found.get('step') is None or int(found['step']) > int(resumed):
                return found
            if time.time() >= deadline:
                raise MigrationError('%s on %s wrote only checkpoints of the step it resumed from (%s) within %s s'
                                     % (name, here, resumed, timeout))
            time.sleep(0.2)
    names = sorted(placed)
    answers = _parallel(lambda n: beyond(n, placed[n]), names)
    for name, answer in zip(names, answers):
        if isinstance(answer, Exception):
            errors.append(str(answer))
            rows[name] = {'error': str(answer)}
        else:
            rows[name] = {'first_new_step': answer.get('step'), 'first_new_checkpoint_at': answer.get('mtime'),
                          'resumed_at': iso()}
    return {'changed': False, 'progress': rows, 'errors': errors,
            'migration': {'id': migration_id, 'step': 'running', 'target': here, 'workloads': rows}}


def manifest_step(checkpoint):
    """The step a sealed checkpoint's manifest names (None when unsealed)."""
    manifest = read_manifest(checkpoint)
    return manifest.get('step') if manifest else None


def list_images(run, clis):
    """The container images this node holds (``repository:tag``), from the first of ``clis`` (podman, docker) that
    answers; None when none is installed or none answers (placement then does not judge by images)."""
    for cli in clis:
        if not cli:
            continue
        rc, out, _err = run([cli, 'images', '--format', '{{.Repository}}:{{.Tag}}'])
        if rc == 0:
            return sorted(set(line.strip() for line in out.splitlines() if line.strip() and '<none>' not in line))
    return None


def target_describe(host, lifecycle, gpu_backend, notice_check=None, images=None):
    """One candidate target as placement ranks it, in one call: its GPUs (``gpu_backend()`` makes the backend),
    for a spot node (``notice_check()`` reads its metadata service, never raising) whether it has a notice of its
    own, and the container images it holds (``images()``, see list_images), so a container workload is only placed
    where it can start. A node whose GPUs or metadata cannot be read is described as blind, with the error, never as
    free."""
    error, gpus = None, {}
    try:
        gpus = gpu_facts(gpu_backend())
    except Exception as exc:  # noqa: BLE001 - any failure reading the GPUs makes this node unusable, said why
        error = 'GPUs unreadable: %s' % exc
    notice = notice_check() if notice_check is not None else {}
    error = error or notice.get('error')
    return {'changed': False, 'notice': notice or None, 'candidate': {
        'host': host, 'free_gpus': gpus.get('free_gpus') or [], 'gpus': gpus.get('gpus') or [], 'lifecycle': lifecycle,
        'evicting': bool(notice.get('evicting')), 'blind': bool(error), 'error': error,
        'images': images() if images is not None else None}}
