# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller's side of a migration run: the plan (every variable checked where it enters), the joint
reservation's requests, each workload's assignment, what each target gets, and the records. Pure functions over plain
values, used by the collection's ``migration_*`` filters so that the playbook only wires; no Ansible imports.

A run may carry a wave: several sources, each its own migration (id, fence, workloads), in one playbook run.
"""

from __future__ import absolute_import, division, print_function

import os
import random
import shlex
import time

from ._migration import MigrationError, check_id, check_root, iso
from ._transfer import KINDS
from ._workload import NAME_RE

__metaclass__ = type

PER_SOURCE = ('migration_id', 'workloads', 'include_stopped', 'pinned_targets', 'signalled_at', 'deadline', 'notice_at',
              'detected_at', 'fence_file', 'migration_fence', 'prestaged', 'choices')

# How the source copy is stopped once its checkpoint is taken (see _migration._stop_and_take).
SOURCE_STOPS = ('auto', 'graceful')


def _names(value, what):
    if value in (None, ''):
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(',') if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise MigrationError('%s must be a list of names, not %r' % (what, value))
    for name in value:
        if not NAME_RE.match(str(name)):
            raise MigrationError('%s: workload name %r is not allowed (letters, digits, ".", "_" and "-", up to 63)'
                                 % (what, name), value=name)
    return [str(v) for v in value]


def _hosts(value, inventory, what):
    hosts = _names(value, what) if isinstance(value, str) else list(value or [])
    for host in hosts:
        if host not in inventory:
            raise MigrationError('%s %s is not in the inventory' % (what, host), value=host)
    return [str(h) for h in hosts]


def _float(value, what):
    if value in (None, '', 'None', 'none', 'null'):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MigrationError('%s must be a number of seconds, not %r' % (what, value), value=value)


def _bool(value, what):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ('1', 'true', 'yes', 'on', 'y'):
        return True
    if text in ('0', 'false', 'no', 'off', 'n', '', 'none'):
        return False
    raise MigrationError('%s must be true or false, not %r' % (what, value), value=value)


def plan(variables, groups, now=None):
    """Check and normalise the migrate playbook's variables into ``{sources, by_source, candidates, transfer,
    target, exclude}``. ``source`` (one host, or a list / comma-separated string for a wave) and the per-source values
    (top level, or under ``migrations: {source: {...}}``) are checked where they enter: every id and name that becomes
    a path, every host against the inventory."""
    now = time.time() if now is None else now
    inventory = set(groups.get('all') or [])
    for group in groups.values():
        inventory.update(group or [])
    raw = variables.get('source')
    if raw in (None, '', []):
        raise MigrationError('source is required: the inventory host (or hosts) the workloads move off')
    sources = _hosts(raw if isinstance(raw, (list, tuple)) else str(raw), inventory, 'source')
    if len(set(sources)) != len(sources):
        raise MigrationError('source lists a host twice: %s' % ', '.join(sources))
    transfer = variables.get('transfer') or 'rsync'
    if transfer not in KINDS:
        raise MigrationError('transfer must be one of %s, not %r' % (', '.join(KINDS), transfer), value=transfer)
    source_stop = variables.get('source_stop') or 'auto'
    if source_stop not in SOURCE_STOPS:
        raise MigrationError('source_stop must be one of %s, not %r' % (', '.join(SOURCE_STOPS), source_stop),
                             value=source_stop)
    target = variables.get('target') or None
    if target is not None:
        _hosts([target], inventory, 'target')
    per = variables.get('migrations') or {}
    if not isinstance(per, dict):
        raise MigrationError('migrations must be a dict of source -> its values, not %r' % (per,))
    unknown = sorted(set(per) - set(sources))
    if unknown:
        raise MigrationError('migrations names %s, which is not among the sources (%s)'
                             % (', '.join(unknown), ', '.join(sources)))
    by_source = {}
    for source in sources:
        values = dict((k, variables.get(k)) for k in PER_SOURCE)
        values.update(per.get(source) or {})
        if len(sources) > 1 and source not in per and variables.get('migration_id'):
            raise MigrationError('a wave of %d sources needs migrations: {source: {migration_id: ...}}, not one '
                                 'migration_id for all' % len(sources))
        mid = values.get('migration_id') or '%s-%s-%06d' % (
            time.strftime('%Y%m%dT%H%M%S', time.gmtime(now)), source, random.randint(0, 999999))
        pinned = values.get('pinned_targets') or {}
        if not isinstance(pinned, dict):
            raise MigrationError('pinned_targets must be a dict of workload -> host, not %r' % (pinned,))
        _names(list(pinned), 'pinned_targets')
        _hosts(list(pinned.values()), inventory, 'pinned target')
        fence_file = values.get('fence_file') or ''
        if fence_file:
            check_root(fence_file, 'fence_file')
        prestaged = values.get('prestaged') or {}
        if not isinstance(prestaged, dict):
            raise MigrationError('prestaged must be a dict of workload -> {target, root, step}, not %r' % (prestaged,))
        for name, replica in prestaged.items():
            _names([name], 'prestaged')
            if not isinstance(replica, dict):
                raise MigrationError('prestaged %s must be {target, root, step}, not %r' % (name, replica))
            if replica.get('root'):
                check_root(replica['root'], 'prestaged %s root' % name)
            if replica.get('store'):
                from ._objstore import StoreError, check_program, check_remote
                try:
                    check_remote(replica['store'])
                    check_program(replica.get('store_rclone') or 'rclone')
                except StoreError as exc:
                    raise MigrationError('prestaged %s: %s' % (name, exc))
        choices = values.get('choices') or {}
        if not isinstance(choices, dict):
            raise MigrationError('choices must be a dict of workload -> {from, fallback}, not %r' % (choices,))
        for name, choice in choices.items():
            _names([name], 'choices')
            if not isinstance(choice, dict) or (choice.get('from') or 'emergency') not in ('emergency', 'newest', 'replica') \
                    or (choice.get('fallback') or None) not in (None, 'replica'):
                raise MigrationError('choices %s must be {from: emergency|newest|replica, fallback: replica or none}, '
                                     'not %r' % (name, choice))
        workloads = _names(values.get('workloads'), 'workloads')
        include_stopped = _bool(values.get('include_stopped') or False, 'include_stopped')
        if include_stopped and not workloads:
            raise MigrationError('include_stopped needs workloads: the names of the stopped workloads to move')
        by_source[source] = {
            'id': check_id(mid), 'source': source, 'workloads': workloads, 'include_stopped': include_stopped,
            'pinned_targets': dict((str(k), str(v)) for k, v in pinned.items()),
            'signalled_at': _float(values.get('signalled_at'), 'signalled_at') or None,
            'deadline': _float(values.get('deadline'), 'deadline'),
            'notice_at': values.get('notice_at') or None, 'detected_at': values.get('detected_at') or None,
            'fence_file': fence_file, 'fence': str(values.get('migration_fence') or ''), 'prestaged': prestaged,
            'choices': choices, 'started_at': iso(now),
        }
    exclude = _hosts(variables.get('exclude_hosts') or [], inventory | set(variables.get('exclude_hosts') or []),
                     'exclude_hosts')
    # Nodes with an early warning (the watcher passes them): still candidates, asked and chosen last.
    at_risk = _hosts(variables.get('at_risk_hosts') or [], inventory, 'at_risk_hosts')
    pool = list(groups.get('standby') or []) + list(groups.get('spot') or [])
    # Only the nodes that can be chosen are asked: the pinned target, or the targets a resumed run already holds.
    only = set([target] if target else [])
    if not only and all(e['workloads'] and set(e['workloads']) <= set(e['pinned_targets']) for e in by_source.values()):
        only = set(t for e in by_source.values() for t in e['pinned_targets'].values())
    candidates = []
    for host in pool:
        if host not in candidates and host not in sources and host not in exclude and (not only or host in only):
            candidates.append(host)
    # Placement prefers the standby (on-demand) nodes, so they are asked first, with the targets replicas already wait
    # on; the other candidates only when those cannot take every workload (every node asked costs the controller an
    # SSH session and a module run while the window runs). Without a standby group, or with pinned targets, all at once.
    preferred = set(groups.get('standby') or []) | set(
        r['target'] for e in by_source.values() for r in e['prestaged'].values() if isinstance(r, dict) and r.get('target'))
    first = [h for h in candidates if h in preferred]
    if only or not first:
        first = list(candidates)
    if not only and any(h not in at_risk for h in first):
        first = [h for h in first if h not in at_risk]
    settings = {}
    for key, default in (('safety_margin', 5.0), ('default_deadline', 30.0), ('resume_timeout', 120.0)):
        value = _float(variables.get(key), key)
        settings[key] = default if value is None else value
        if settings[key] < 0:
            raise MigrationError('%s must not be negative, not %r' % (key, variables.get(key)))
    for key in ('record_dir', 'reservation_file'):
        settings[key] = check_root(str(variables.get(key) or '').strip(), 'spot_' + key) if variables.get(key) else None
    hooks = variables.get('alert_webhooks') or []
    if isinstance(hooks, str):
        hooks = [hooks]
    for hook in hooks:
        if not str(hook).startswith(('http://', 'https://')):
            raise MigrationError('alert_webhooks: %r is not an http(s) URL' % (hook,), value=hook)
    settings['alert_webhooks'] = [str(h) for h in hooks]
    out = {'sources': sources, 'by_source': by_source, 'candidates': candidates, 'first_candidates': first,
           'later_candidates': [h for h in candidates if h not in first], 'transfer': transfer,
           'target': target, 'exclude': exclude, 'at_risk': at_risk, 'source_stop': source_stop}
    out.update(settings)
    return out


def fence_holds(entry):
    """Does this run still hold the migration (its fence token is the one in the fence file)? True without one."""
    if not entry.get('fence_file'):
        return True
    try:
        with open(entry['fence_file']) as handle:
            return handle.read().strip() == entry.get('fence')
    except (IOError, OSError):
        return False


def candidate(host, gpus, notice, lifecycle):
    """One candidate target as placement ranks it, from its gpu_info and eviction_info results."""
    gpus = gpus or {}
    notice = notice or {}
    failed = bool(gpus.get('failed')) or bool(gpus.get('unreachable'))
    error = gpus.get('msg') if failed else notice.get('error')
    return {'host': host, 'free_gpus': [] if failed else gpus.get('free_gpus') or [],
            'gpus': [] if failed else gpus.get('gpus') or [], 'lifecycle': lifecycle,
            'evicting': bool(notice.get('evicting')), 'blind': failed or bool(notice.get('error')), 'error': error}


def candidates(the_plan, host_vars, groups, more=None):
    """Every candidate target described (``migrate_described``: migration_target step=describe registered on it, or
    the results of a loop that described more of them, ``more``, each with its ``item``); one that could not be asked
    (unreachable, failed) is blind. One not asked at all is left out."""
    out = []
    extra = dict((r.get('item'), r) for r in more or [] if isinstance(r, dict) and r.get('item'))
    for host in the_plan['candidates']:
        described = (host_vars.get(host) or {}).get('migrate_described') or extra.get(host)
        if not described or described.get('skipped'):
            continue
        if described.get('candidate'):
            out.append(dict(described['candidate'], at_risk=host in (the_plan.get('at_risk') or [])))
            continue
        lifecycle = (host_vars.get(host) or {}).get('spot_lifecycle') or (
            'on-demand' if host in (groups.get('standby') or []) else 'spot')
        out.append(candidate(host, {'failed': True, 'msg': described.get('msg') or 'not described'}, {}, lifecycle))
    return out


def requests(the_plan, checkpoints, unplaced=None):
    """The joint reservation's requests: one per workload of every source whose checkpoint step answered. With
    ``unplaced`` (an earlier round's reservations), only those that round could not place (an ``error``)."""
    missing = None if unplaced is None else set(r.get('owner') for r in unplaced or [] if r.get('error'))
    out = []
    for source in the_plan['sources']:
        entry = the_plan['by_source'][source]
        result = checkpoints.get(source) or {}
        for w in result.get('moving') or []:
            if missing is not None and '%s/%s' % (entry['id'], w['name']) not in missing:
                continue
            out.append({'owner': '%s/%s' % (entry['id'], w['name']), 'name': w['name'], 'source': source,
                        'gpus': len((w.get('spec') or {}).get('gpus') or []), 'exclude': [source],
                        'target': entry['pinned_targets'].get(w['name']) or the_plan.get('target'),
                        'adopt': 'replica/%s' % w['name'],
                        'image': (w.get('spec') or {}).get('image') if w.get('runtime') != 'process' else None})
    return out


def endpoint(name, host_vars, via_ssh_config=None, controller=False):
    """A node as an SSH destination: ``{name, host, ssh, root}``. From another node (``via_ssh_config``: that node's
    ``spot_ssh_config``) or from the controller (the node's own connection variables)."""
    host_vars = host_vars or {}
    port = str(host_vars.get('ansible_port') or 22)
    if controller:
        ssh = ['ssh', '-p', port]
        if host_vars.get('ansible_ssh_private_key_file'):
            ssh += ['-i', str(host_vars['ansible_ssh_private_key_file'])]
        if host_vars.get('ansible_user'):
            ssh += ['-l', str(host_vars['ansible_user'])]
        ssh += shlex.split(str(host_vars.get('ansible_ssh_common_args') or ''))
    elif via_ssh_config:
        ssh = ['ssh', '-F', str(via_ssh_config)]
    else:
        ssh = ['ssh', '-p', port]
    root = host_vars.get('spot_checkpoint_root')
    return {'name': name, 'host': str(host_vars.get('ansible_host') or name), 'ssh': ssh,
            'root': check_root(root, 'spot_checkpoint_root of %s' % name) if root else None}


def retry_requests(the_plan, source, release, assigned=None):
    """Reservation requests for the workloads whose transfer failed: the same owner, released first, the failed
    target excluded."""
    entry = the_plan['by_source'][source]
    out = []
    for r in (release or {}).get('sealed') or []:
        if r.get('transfer_error'):
            out.append({'owner': '%s/%s' % (entry['id'], r['name']), 'name': r['name'], 'source': source,
                        'gpus': len(((assigned or {}).get(r['name']) or {}).get('gpus') or []),
                        'exclude': [source, r.get('target')], 'release_first': True})
    return out


def _fenced(entry, before):
    return MigrationError('fenced: migration %s now belongs to a newer run (this run holds token %s); stopping before %s'
                          % (entry['id'], entry.get('fence'), before))


STORE_KEYS = ('store', 'store_transfers', 'store_rclone')


def assignments(the_plan, source, reservations, hostvars, controller=False):
    """``{workload: endpoint + gpus + owner + replica_root}`` for one source, from the joint reservation's results;
    with ``store`` (and ``store_transfers``, ``store_rclone``) where the watcher knows a replica of the workload in
    object storage, which any target can restore.
    Only while this run still holds the migration (its fence): otherwise MigrationError, so the task that would stop
    the source copy fails before it starts."""
    entry = the_plan['by_source'][source]
    src_vars = hostvars.get(source) or {}
    out = {}
    for r in reservations or []:
        if r.get('source', source) != source or not r.get('target') or not str(r.get('owner', '')).startswith(entry['id'] + '/'):
            continue
        name = r.get('name') or r['owner'].split('/', 1)[1]
        target = r['target']
        point = endpoint(target, hostvars.get(target), src_vars.get('spot_ssh_config'), controller=controller)
        replica = entry['prestaged'].get(name) or {}
        held_here = replica.get('target') == target and replica.get('step') is not None
        point.update({'gpus': list(r.get('gpus') or []), 'owner': r['owner'],
                      'replica_root': (replica.get('root') or None) if held_here else None})
        if replica.get('store'):
            point.update(dict((k, replica[k]) for k in STORE_KEYS if replica.get(k) is not None))
        out[name] = point
    if out and not fence_holds(entry):
        raise _fenced(entry, 'anything changes')
    return out


def moved(the_plan, source, checkpoint, release, retry=None, relay=None, source_root=None, restart=None,
          assigned=None):
    """Each sealed workload of one source where its checkpoint ended up: ``[{name, migration_id, target, gpus, owner,
    checkpoint, staged, is_dir, step, spec, source_root, transfer, failed_targets, transfer_error}]``."""
    entry = the_plan['by_source'][source]
    specs = dict((w['name'], w.get('spec') or {}) for w in (checkpoint or {}).get('moving') or [])
    rows = dict((r['name'], dict(r)) for r in (release or {}).get('sealed') or [])
    for later in (relay, retry):
        for r in (later or {}).get('sealed') or []:
            if r['name'] in rows:
                failed = rows[r['name']].get('failed_targets') or []
                if later is retry:
                    failed = failed + [rows[r['name']].get('target')]
                rows[r['name']].update(r)
                rows[r['name']]['failed_targets'] = failed
    restarted = ((restart or {}).get('migration') or {}).get('workloads') or {}
    out = []
    for name in sorted(rows):
        r = rows[name]
        if name in restarted:
            r['restarted_on_source'] = bool(restarted[name].get('restarted_on_source'))
        point = (assigned or {}).get(name) or {}
        if point.get('name') == r.get('target'):
            r.setdefault('gpus', point.get('gpus'))
            r['owner'] = point.get('owner')
        r.update({'migration_id': entry['id'], 'source': source, 'spec': specs.get(name, {}),
                  'source_root': source_root or ''})
        # A workload resumed from the replica on its target (the plan's choice, or a copy too slow for the window)
        # says so itself; the others moved the run's way.
        if r.get('transfer') == 'replica':
            r['replica_root'] = point.get('replica_root')
            r.update(dict((k, point[k]) for k in STORE_KEYS if point.get(k) is not None))
        else:
            r['transfer'] = the_plan['transfer']
        r.setdefault('failed_targets', [])
        out.append(r)
    return out


def gather(host_vars, hosts, name):
    """``{host: its variable name}`` for the hosts that have it."""
    return dict((h, (host_vars.get(h) or {})[name]) for h in hosts if name in (host_vars.get(h) or {}))


def failed_transfers(host_vars, sources):
    """The sources whose first transfer left something unmoved: the relay's result where the relay ran, else the
    release's (``failed_transfers``). Their failover runs; the other sources are not asked."""
    out = []
    for source in sources or []:
        hv = host_vars.get(source) or {}
        relay = hv.get('migrate_relay') or {}
        first = relay if relay and not relay.get('skipped') else (hv.get('migrate_release') or {})
        if not first.get('skipped') and first.get('failed_transfers'):
            out.append(source)
    return out


def placements(moved_by_source, target=None, the_plan=None):
    """What ``target`` gets (every target's when None): the moved rows that landed there. With ``the_plan``, only
    while this run still holds each row's migration (its fence): otherwise MigrationError, before anything starts."""
    out = []
    for _source, rows in sorted((moved_by_source or {}).items()):
        for r in rows or []:
            if not r.get('target') or r.get('error') or r.get('transfer_error') or r.get('restarted_on_source'):
                continue
            if r['transfer'] not in ('shared', 'replica') and not r.get('staged'):
                continue
            if target is None or r['target'] == target:
                entry = (the_plan or {}).get('by_source', {}).get(r.get('source') or _source)
                if entry is not None and not fence_holds(entry):
                    raise _fenced(entry, '%s starts' % r.get('name'))
                out.append(dict(r, gpus=r.get('gpus') or []))
    return out


def targets(moved_by_source):
    """The hosts that get a checkpoint."""
    return sorted(set(r['target'] for r in placements(moved_by_source)))


def started_here(placed_by_target, source):
    """The workloads of ``source`` that now run on their targets (to be removed from the source)."""
    names = []
    for _target, result in sorted((placed_by_target or {}).items()):
        for name, row in ((result or {}).get('placed') or {}).items():
            if row.get('source') == source and row.get('started_at'):
                names.append({'name': name})
    return names


def per_source(the_plan, host_vars, reservations=None):
    """What each source's migration did, gathered from the hosts' registered results."""
    placed, progress, target_errors = {}, {}, {}
    for host, hv in host_vars.items():
        result = hv.get('migrate_placed') or {}
        if result.get('failed') or result.get('unreachable'):
            target_errors[host] = '%s: %s' % (host, result.get('msg'))
        for name, row in (result.get('placed') or {}).items():
            placed[(row.get('migration_id'), name)] = row
        for name, row in ((hv.get('migrate_progress') or {}).get('progress') or {}).items():
            progress[name] = row
    out = {}
    for source in the_plan['sources']:
        hv = host_vars.get(source) or {}
        entry = the_plan['by_source'][source]
        checkpoint = hv.get('migrate_checkpoint') or {}
        names = [m['name'] for m in hv.get('migrate_moved') or []]
        errors = []
        if checkpoint.get('unreachable'):
            errors.append('source %s was unreachable before the emergency checkpoint: nothing was moved. There is no '
                          'verified copy of its checkpoints elsewhere to resume from; if the node comes back, run this '
                          'again.' % source)
        elif checkpoint.get('failed'):
            errors.append('%s: %s' % (source, checkpoint.get('msg')))
        release = hv.get('migrate_release') or {}
        if release.get('failed'):
            errors.append('%s: %s' % (source, release.get('msg')))
        errors.extend(release.get('errors') or [])
        mine = [r for r in reservations or [] if str(r.get('owner', '')).startswith(entry['id'] + '/')]
        errors.extend('%s: %s' % (r.get('name'), r['error']) for r in mine if r.get('error'))
        for m in hv.get('migrate_moved') or []:
            if (entry['id'], m['name']) not in placed and m.get('target') in target_errors:
                m['error'] = m.get('error') or target_errors[m['target']]
        out[source] = {
            'checkpoint': checkpoint, 'moved': hv.get('migrate_moved') or [], 'provider': hv.get('spot_provider'),
            'placed': dict((n, placed[(entry['id'], n)]) for n in names if (entry['id'], n) in placed),
            'progress': dict((n, progress[n]) for n in names if n in progress),
            'reserved_at': dict((r.get('name'), iso(r['reserved_at'])) for r in mine if r.get('reserved_at')),
            'reachable': not checkpoint.get('unreachable'), 'errors': errors}
    return out


def problems(records_, check_mode):
    """Everything that went wrong in the run, one line each (empty when every workload runs on its target)."""
    out = []
    for record in records_:
        out.extend(record['errors'])
        for row in record['migrations']:
            if not check_mode and row['outcome'] != 'running':
                out.append('%s (%s): %s%s' % (row['workload'], record['id'], row['outcome'],
                                              ': %s' % row['error'] if row.get('error') else ''))
    return out


def records(the_plan, check_mode, per_source, finished_at=None):
    """One record per source's migration: a row per workload with its timeline. ``per_source``: ``{source:
    {checkpoint, moved, placed, progress, reachable, errors}}`` where placed/progress are ``{workload: row}``."""
    out = []
    for source in the_plan['sources']:
        entry = the_plan['by_source'][source]
        data = per_source.get(source) or {}
        checkpoint = data.get('checkpoint') or {}
        emergency = (checkpoint.get('migration') or {}).get('workloads') or {}
        rows = []
        for m in data.get('moved') or []:
            name = m['name']
            placed = (data.get('placed') or {}).get(name) or {}
            progress = (data.get('progress') or {}).get(name) or {}
            e = emergency.get(name) or {}
            rows.append({
                'workload': name, 'source': source, 'target': m.get('target') if placed else (
                    source if m.get('restarted_on_source') else m.get('target')),
                'gpus': m.get('gpus') or [], 'failed_targets': [t for t in m.get('failed_targets') or [] if t],
                'provider': data.get('provider'), 'notice_at': entry['notice_at'] or checkpoint.get('checkpointed_at'),
                'detected_at': entry['detected_at'] or entry['notice_at'],
                'deadline_s': checkpoint.get('deadline'),
                # The release row says how an emergency checkpoint asked without waiting went; else the checkpoint
                # step's row.
                'emergency_checkpoint_ok': m.get('emergency_ok', e.get('emergency_ok')),
                'emergency_error': m.get('emergency_error', e.get('emergency_error')),
                'stopped_by': m.get('stopped_by'),
                'checkpoint_step': m.get('step') if m.get('step') is not None else placed.get('step'),
                'checkpoint_verified_at': m.get('verified_at'), 'target_chosen_at': (data.get('reserved_at') or {}).get(name),
                'transfer_started_at': m.get('transfer_started_at'), 'transferred_at': m.get('transferred_at'),
                'transfer': m.get('transfer') or the_plan['transfer'], 'bytes': m.get('bytes'),
                'linked_from': m.get('linked_from'),
                # The plan against the deadline (when the watcher made one): what it chose, and a copy given up.
                'resume_choice': m.get('resume_choice'), 'choice_note': m.get('choice_note'),
                'fell_back': m.get('fell_back'),
                'verified_on_target_at': placed.get('verified_at'), 'started_on_target_at': placed.get('started_at'),
                'resumed_at': progress.get('resumed_at'),
                'resumed_step': m.get('step') if m.get('step') is not None else placed.get('step'),
                'resumed_from': placed.get('checkpoint'), 'resumed_from_kind': placed.get('resumed_from_kind'),
                'first_new_step': progress.get('first_new_step'),
                'first_new_checkpoint_at': progress.get('first_new_checkpoint_at'),
                'restarted_on_source': bool(m.get('restarted_on_source')),
                'outcome': 'running' if progress.get('first_new_step') is not None else (
                    'started' if placed else ('restarted_on_source' if m.get('restarted_on_source') else 'failed')),
                'error': m.get('error') or m.get('transfer_error') or progress.get('error'),
            })
        out.append({'id': entry['id'], 'source': source, 'transfer': the_plan['transfer'],
                    'started_at': entry['started_at'], 'finished_at': finished_at or iso(), 'check_mode': bool(check_mode),
                    'reachable': data.get('reachable', True), 'errors': list(data.get('errors') or []), 'migrations': rows})
    return out


def record_path(directory, record):
    """``<directory>/<id>.json`` with the id checked again (it becomes a file name)."""
    return os.path.join(directory, check_id(record['id']) + '.json')
