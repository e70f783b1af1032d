# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller's side of a gang migration (the migrate_gang playbook, through the migration_gang filter): the
run's plan from its variables, the hosts each play runs on, the reservation requests for the evicted members, the
new layout (the step every member holds, a replacement per evicted member, the new rendezvous), each new member's
placement, and the record. Pure data; no I/O but the fence file."""

from __future__ import absolute_import, division, print_function

import os
import time

from ._checkpoint import step_from_name
from ._gang import GangError, check_gang, common_step, member_name, new_layout
from ._migration import MigrationError, check_id, staging_dir
from ._plan import _fenced, _hosts, endpoint, fence_holds

__metaclass__ = type


def plan(variables, groups, now=None):
    """The run's plan from the playbook's variables: ``gang`` (its name), ``source`` (the evicted member or members),
    and optionally ``gang_members`` (the members by rank, as the watcher knows them), ``migration_id``,
    ``migration_fence``/``fence_file`` (the watcher's fence), ``signalled_at``, ``deadline``, ``resume_timeout``,
    ``spot_reservation_file``, ``spot_record_dir``, ``alert_webhooks``."""
    v = dict(variables or {})
    gang = v.get('gang')
    try:
        check_gang({'name': gang, 'size': 1, 'rank': 0, 'master_addr': 'x'})
    except GangError as exc:
        raise MigrationError('migrate_gang needs -e gang=NAME: %s' % exc)
    inventory = set(groups.get('all') or [])
    sources = _hosts(v.get('source'), inventory, 'source')
    if not sources:
        raise MigrationError('migrate_gang needs -e source=HOST (the evicted member, or a list), not %r' % (v.get('source'),))
    members = _hosts(v.get('gang_members'), inventory, 'gang_members') or None
    lost = bool(v.get('lost'))
    replicas = v.get('lost_replicas') or {}
    if lost:
        # Lost without a notice: the sources cannot be asked; each one's part comes from its replica node.
        if not members:
            raise MigrationError('a lost member of gang %s cannot be asked who its peers are: give gang_members' % gang)

        def complete(item):
            if not isinstance(item, dict) or not item.get('name') or not isinstance(item.get('spec'), dict):
                return False
            shared = (item['spec'].get('gang') or {}).get('layout') == 'shared'
            return shared or bool(item.get('host') and item.get('root'))  # shared storage holds its part: no replica
        missing = [s for s in sources if not complete(replicas.get(s))]
        if missing:
            raise MigrationError('lost_replicas needs name, host, root and spec (the member\'s) for %s, not %r'
                                 % (', '.join(missing), dict((m, replicas.get(m)) for m in missing)))
    now = time.time() if now is None else now
    mid = check_id(v.get('migration_id') or 'gang-%s-%s' % (gang, time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))))
    return {'gang': gang, 'id': mid, 'sources': sources, 'members': members, 'lost': lost,
            'lost_replicas': dict((k, replicas[k]) for k in sources) if lost else {},
            'fence': str(v['migration_fence']) if v.get('migration_fence') is not None else None,
            'fence_file': v.get('fence_file') or None,
            'signalled_at': v.get('signalled_at'), 'deadline': float(v.get('deadline') or 30.0),
            'resume_timeout': float(v.get('resume_timeout') or 120.0),
            'reservation_file': v['spot_reservation_file'], 'record_dir': v['spot_record_dir'],
            'alert_webhooks': list(v.get('alert_webhooks') or []),
            'pool': [h for h in (groups.get('standby') or []) + (groups.get('spot') or []) if h not in sources]}


def members(the_plan, host_vars):
    """The members by rank: the plan's, else what ``describe`` found on the first source."""
    if the_plan.get('members'):
        return list(the_plan['members'])
    described = (host_vars.get(the_plan['sources'][0]) or {}).get('gang_described') or {}
    found = (described.get('gang') or {}).get('members')
    if not found:
        raise MigrationError('could not learn the members of gang %s from %s: %s'
                             % (the_plan['gang'], the_plan['sources'][0], described.get('msg') or 'no answer'))
    missing = [s for s in the_plan['sources'] if s not in found]
    if missing:
        raise MigrationError('%s: not a member of gang %s (members: %s)'
                             % (', '.join(missing), the_plan['gang'], ', '.join(found)))
    return list(found)


def checkpoint_hosts(the_plan, host_vars):
    """The first play's hosts: every member (it saves) and every candidate for a replacement (described meanwhile)."""
    found = members(the_plan, host_vars)
    asked = [h for h in found if not (the_plan.get('lost') and h in the_plan['sources'])]
    holders = [r['host'] for r in (the_plan.get('lost_replicas') or {}).values() if r.get('host')]
    return asked + [h for h in the_plan['pool'] + holders if h not in found and h not in asked]


def replica_lists(the_plan, host):
    """What ``host`` lists as a replica node of lost members: ``[{name, root}]``."""
    return [{'name': r['name'], 'root': r['root']} for r in (the_plan.get('lost_replicas') or {}).values()
            if r.get('host') and r['host'] == host]


def _parts(the_plan, host_vars, found):
    parts, errors, rows = {}, [], {}
    for host in found:
        if the_plan.get('lost') and host in the_plan['sources'] and \
                (the_plan['lost_replicas'][host]['spec'].get('gang') or {}).get('layout') == 'shared':
            continue  # on shared storage: what every survivor holds (below)
        if the_plan.get('lost') and host in the_plan['sources']:
            lost = the_plan['lost_replicas'][host]
            listed = ((host_vars.get(lost['host']) or {}).get('gang_replica') or {})
            held = (listed.get('replicas') or {}).get(lost['name'])
            if listed.get('failed') or listed.get('unreachable') or held is None:
                errors.append('%s (lost): its replica on %s: %s' % (host, lost['host'], listed.get('msg') or 'no answer'))
                continue
            parts[host] = held.get('steps') or []
            rows[host] = {'name': lost['name'], 'steps': parts[host], 'spec': lost['spec'], 'replica': lost}
            continue
        result = (host_vars.get(host) or {}).get('gang_checkpoint') or {}
        member = result.get('member')
        if result.get('failed') or result.get('unreachable') or not member:
            errors.append('%s: %s' % (host, result.get('msg') or 'no answer'))
            continue
        parts[host] = member.get('steps') or []
        rows[host] = member
    if errors:
        raise MigrationError('gang %s could not checkpoint together (%s): nothing was stopped'
                             % (the_plan['gang'], '; '.join(errors)))
    for host in found:
        if host not in rows and parts:  # lost, its part on shared storage: the steps the survivors see there
            lost = the_plan['lost_replicas'][host]
            parts[host] = sorted(set.intersection(*(set(p) for p in parts.values())), reverse=True)
            rows[host] = {'name': lost['name'], 'steps': parts[host], 'spec': lost['spec'], 'shared': True}
    return parts, rows


def requests(the_plan, host_vars):
    """A reservation request per evicted member: its GPUs, never on a member or a source."""
    found = members(the_plan, host_vars)
    _parts_, rows = _parts(the_plan, host_vars, found)
    out = []
    for host in the_plan['sources']:
        row = rows[host]
        request = {'owner': '%s/%s' % (the_plan['id'], row['name']), 'name': row['name'], 'source': host,
                   'gpus': len((row.get('spec') or {}).get('gpus') or []),
                   'exclude': sorted(set(found) | set(the_plan['sources'])), 'apart': 'gang/' + the_plan['gang']}
        if row.get('replica'):  # its replica node takes it: the part is already there
            request.update({'target': row['replica']['host'], 'adopt': 'replica/%s' % row['name']})
        out.append(request)
    return out


def candidates(the_plan, host_vars):
    """The described candidates (migration_target step=describe's ``candidate``), members left out."""
    found = set(members(the_plan, host_vars))
    out = []
    for host in the_plan['pool']:
        described = (host_vars.get(host) or {}).get('migrate_described') or {}
        if host not in found and described.get('candidate'):
            out.append(described['candidate'])
    return out


def layout(the_plan, host_vars, reservations):
    """The gang after this migration: ``step`` (the newest every member holds), ``replacements`` (evicted ->
    target), ``gang`` (the new description, without rank), ``old_members``, ``new_members``, and per evicted member
    the endpoint its part goes to (``targets``). A MigrationError - before anything is stopped - when a member could
    not save, no step is held by every member, or an evicted member has no replacement."""
    found = members(the_plan, host_vars)
    parts, rows = _parts(the_plan, host_vars, found)
    done = _already_moved(the_plan, found, rows, host_vars, reservations)
    if done is not None:
        return done
    try:
        step = common_step(parts)
    except GangError as exc:
        raise MigrationError('gang %s: %s; nothing was stopped' % (the_plan['gang'], exc))
    replacements, errors = {}, []
    for r in reservations or []:
        if r.get('error') or not r.get('target'):
            errors.append('%s (on %s): %s' % (r.get('name'), r.get('source'), r.get('error') or 'no target'))
        else:
            replacements[r['source']] = r
    if errors:
        raise MigrationError('gang %s: no replacement for %s; nothing was stopped, the gang runs on'
                             % (the_plan['gang'], '; '.join(errors)))
    released = [h for h in found if not (the_plan.get('lost') and h in the_plan['sources'])]
    gang = dict(check_gang(rows[found[0]]['spec']['gang']), members=found)
    gang['generation'] = max(check_gang(r['spec']['gang'])['generation'] for r in rows.values())
    addresses = dict((h, str((host_vars.get(h) or {}).get('spot_gang_address') or (host_vars.get(h) or {}).get(
        'ansible_host') or h)) for h in found + [r['target'] for r in replacements.values()])
    try:
        new = new_layout(gang, the_plan['sources'], dict((s, r['target']) for s, r in replacements.items()), addresses)
    except GangError as exc:
        raise MigrationError(str(exc))
    shared = gang.get('layout') == 'shared'
    targets = {}
    for source, r in replacements.items():
        if shared:  # nothing moves: every member mounts the gang's checkpoint
            targets[source] = {'name': r['target'], 'gpus': list(r.get('gpus') or []), 'owner': r.get('owner'),
                               'shared': True}
            continue
        if rows[source].get('replica'):
            targets[source] = {'name': r['target'], 'gpus': list(r.get('gpus') or []), 'owner': r.get('owner'),
                               'replica': rows[source]['replica']}
            continue
        point = endpoint(r['target'], host_vars.get(r['target']),
                         (host_vars.get(source) or {}).get('spot_ssh_config'))
        point.update({'gpus': list(r.get('gpus') or []), 'owner': r.get('owner')})
        targets[source] = point
    return {'id': the_plan['id'], 'gang': new, 'step': step, 'old_members': found, 'new_members': new['members'],
            'sources': list(the_plan['sources']), 'targets': targets, 'lost': bool(the_plan.get('lost')),
            'released': released, 'shared': shared,
            # One checkpoint on shared storage is sealed once, by a member that stays (else the first one asked).
            'sealer': next((h for h in released if h not in the_plan['sources']), released[0] if released else None),
            'replacements': dict((s, r['target']) for s, r in replacements.items()),
            'names': dict((h, rows[h]['name']) for h in found),
            'specs': dict((h, rows[h]['spec']) for h in found if rows[h].get('shared'))}


def _already_moved(the_plan, found, rows, host_vars, reservations):
    """A run resumed after an earlier one (its watcher died) restarted the gang without the sources: a member runs a
    newer generation whose members leave every source out. Then nothing is stopped again; the layout (``done``) says
    how each new member starts - a survivor from the part it already resumed from (left running when it runs), a
    replacement from the copy the earlier run staged or put in place - so a gang the earlier run only half started
    runs whole."""
    base = check_gang(rows[the_plan['sources'][0]]['spec']['gang'])['generation']
    newer = [(h, check_gang(r['spec']['gang'])) for h, r in rows.items() if (r.get('spec') or {}).get('gang')]
    newer = [(h, g) for h, g in newer if g['generation'] > base and not set(g['members']) & set(the_plan['sources'])]
    if not newer:
        return None
    host, gang = max(newer, key=lambda hg: hg[1]['generation'])
    resumed = rows[host]['spec'].get('resume_from')
    step = step_from_name(os.path.basename(str(resumed or '').rstrip('/')))
    if step is None:
        raise MigrationError('gang %s runs generation %d on %s, which says no step it resumed from'
                             % (the_plan['gang'], gang['generation'], host))
    part = os.path.basename(resumed.rstrip('/'))
    reserved = dict((r.get('source'), r) for r in reservations or [] if r.get('target'))
    resume, targets = {}, {}
    for rank, (old, new) in enumerate(zip(found, gang['members'])):
        if old == new:
            spec = rows[old]['spec']
            current = check_gang(spec['gang'])['generation'] == gang['generation']
            resume[new] = {'checkpoint': os.path.join(spec['checkpoint_dir'], part), 'spec': spec, 'transfer': 'shared',
                           'running': bool(rows[old].get('running')) and current}
            continue
        got = reserved.get(old) or {}
        if got.get('target') != new:
            raise MigrationError('gang %s already runs generation %d with %s in place of %s, but that host is not '
                                 'reserved for it now (%s): start it by hand or run the migration again'
                                 % (the_plan['gang'], gang['generation'], new, old, got.get('error') or got.get('target')))
        root = (host_vars.get(new) or {}).get('spot_checkpoint_root')
        spec = rows[old]['spec']
        if gang['layout'] == 'shared':
            resume[new] = {'checkpoint': os.path.join(spec['checkpoint_dir'], part), 'spec': spec, 'transfer': 'shared'}
            targets[old] = {'name': new, 'gpus': list(got.get('gpus') or []), 'owner': got.get('owner')}
            continue
        resume[new] = {'checkpoint': os.path.join(spec['checkpoint_dir'], part), 'spec': spec, 'transfer': 'rsync',
                       'staged': os.path.join(staging_dir(root, the_plan['id']), part) if root else None,
                       'source_root': str((host_vars.get(old) or {}).get('spot_checkpoint_root') or '')}
        targets[old] = {'name': new, 'gpus': list(got.get('gpus') or []), 'owner': got.get('owner')}
    out_gang = dict(gang)
    out_gang.pop('rank')
    return {'id': the_plan['id'], 'gang': out_gang, 'step': step, 'done': True, 'old_members': found,
            'new_members': out_gang['members'], 'sources': list(the_plan['sources']), 'targets': targets,
            'released': [], 'resume': resume, 'lost': bool(the_plan.get('lost')),
            'replacements': dict((s, out_gang['members'][found.index(s)]) for s in the_plan['sources']),
            'names': dict((h, rows[h]['name']) for h in found)}


def rows_spec(the_layout, old):
    """The spec of the member that was on ``old`` when no release says it (a member lost on shared storage)."""
    spec = (the_layout.get('specs') or {}).get(old)
    if not spec:
        raise MigrationError('no spec of the member on %s' % old)
    return spec


def placements(the_layout, the_plan, host_vars, here):
    """What ``here`` starts: its member of the gang, from its own part (a survivor) or from the verified copy of the
    evicted member's part (a replacement), with the new rendezvous. Only while this run holds its fence."""
    if not fence_holds(the_plan):
        raise _fenced(the_plan, 'the gang starts again')
    rank = the_layout['new_members'].index(here)
    old = the_layout['old_members'][rank]
    if the_layout.get('done'):
        again = the_layout['resume'][here]
        if again.get('running'):
            return []  # it runs the new generation already: left as it is
        spec = dict(again['spec'], gang=dict(the_layout['gang'], rank=rank))
        moved = old != here
        return [{'name': member_name(the_plan['gang'], rank), 'migration_id': the_layout['id'], 'source': old,
                 'target': here, 'checkpoint': again['checkpoint'], 'is_dir': True, 'step': the_layout['step'],
                 'spec': spec, 'transfer': again['transfer'], 'staged': again.get('staged'),
                 'source_root': again.get('source_root') or '',
                 'gpus': list(the_layout['targets'][old]['gpus']) if moved else list(spec.get('gpus') or []),
                 'owner': the_layout['targets'][old].get('owner') if moved else None}]
    release = (host_vars.get(old) or {}).get('gang_release') or {}
    sealed = release.get('sealed')
    released = the_layout.get('released', the_layout['old_members'])
    answers = dict((h, (host_vars.get(h) or {}).get('gang_release') or {}) for h in released)
    failed = [h for h, answer in answers.items() if answer.get('failed') or not answer.get('sealed')]
    if failed:
        raise MigrationError('gang %s does not start again: %s' % (the_plan['gang'], '; '.join(
            '%s: %s' % (h, answers[h].get('msg') or 'no answer') for h in failed)))
    if the_layout.get('shared') and old != here:
        # Shared storage: the replacement resumes from the gang's checkpoint where it is (sealed by the sealer).
        part = ((host_vars.get(the_layout['sealer']) or {}).get('gang_release') or {}).get('sealed') or {}
        spec = dict((sealed or part).get('spec') or rows_spec(the_layout, old), gang=dict(the_layout['gang'], rank=rank))
        return [{'name': member_name(the_plan['gang'], rank), 'migration_id': the_layout['id'], 'source': old,
                 'target': here, 'checkpoint': part['checkpoint'], 'is_dir': part.get('is_dir', True),
                 'step': the_layout['step'], 'spec': spec, 'transfer': 'shared', 'staged': None,
                 'gpus': list(the_layout['targets'][old]['gpus']), 'owner': the_layout['targets'][old].get('owner'),
                 'source_root': ''}]
    lost = (the_layout['targets'].get(old) or {}).get('replica')
    if lost:
        # A lost member: its replica node resumes it from the replica of the gang's step (verified, hard-linked).
        spec = dict(lost['spec'])
        spec['gang'] = dict(the_layout['gang'], rank=rank)
        return [{'name': member_name(the_plan['gang'], rank), 'migration_id': the_layout['id'], 'source': old,
                 'target': here, 'checkpoint': '', 'step': the_layout['step'], 'replica_step': the_layout['step'],
                 'replica_root': lost['root'], 'spec': spec, 'gpus': list(the_layout['targets'][old]['gpus']),
                 'owner': the_layout['targets'][old].get('owner'), 'transfer': 'replica',
                 'source_root': str((host_vars.get(old) or {}).get('spot_checkpoint_root') or '')}]
    spec = dict(sealed['spec'])
    spec['gang'] = dict(the_layout['gang'], rank=rank)
    moved = old != here
    row = {'name': member_name(the_plan['gang'], rank), 'migration_id': the_layout['id'], 'source': old,
           'target': here, 'checkpoint': sealed['checkpoint'], 'is_dir': sealed['is_dir'], 'step': sealed['step'],
           'spec': spec, 'bytes': sealed.get('bytes'),
           'gpus': list(the_layout['targets'][old]['gpus']) if moved else list(spec.get('gpus') or []),
           'owner': the_layout['targets'][old].get('owner') if moved else None,
           'source_root': str((host_vars.get(old) or {}).get('spot_checkpoint_root') or ''),
           'transfer': 'rsync' if moved else 'shared', 'staged': sealed.get('staged') if moved else None}
    return [row]


def record(the_plan, the_layout, host_vars, check_mode, finished_at=None):
    """The run's record: one row per member (old host -> new host, the step, when it ran again, its first new step),
    or the run's error when it stopped before a layout."""
    finished_at = time.time() if finished_at is None else finished_at
    base = {'id': the_plan['id'], 'gang': the_plan['gang'], 'source': ','.join(the_plan['sources']),
            'kind': 'gang', 'check_mode': bool(check_mode),
            'finished_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(finished_at))}
    if not the_layout:
        return dict(base, migrations=[], problems=['gang %s was not moved' % the_plan['gang']])
    rows, problems = [], []
    for rank, (old, new) in enumerate(zip(the_layout['old_members'], the_layout['new_members'])):
        placed = (((host_vars.get(new) or {}).get('migrate_placed') or {}).get('placed') or {})
        progress = (((host_vars.get(new) or {}).get('migrate_progress') or {}).get('progress') or {})
        name = member_name(the_plan['gang'], rank)
        mine, went = placed.get(name) or {}, progress.get(name) or {}
        error = None
        released = old in the_layout.get('released', the_layout['old_members'])
        results = ((host_vars.get(old) or {}).get('gang_release') if released else None,
                   (host_vars.get(new) or {}).get('migrate_placed'), (host_vars.get(new) or {}).get('migrate_progress'))
        for result in results:
            if isinstance(result, dict) and (result.get('failed') or result.get('unreachable')):
                error = error or result.get('msg') or 'unreachable'
        if went.get('error'):
            error = error or went['error']
        if error:
            problems.append('%s (%s -> %s): %s' % (name, old, new, error))
        rows.append({'workload': name, 'rank': rank, 'source': old, 'target': new, 'moved': old != new,
                     'checkpoint_step': the_layout['step'], 'checkpoint': mine.get('checkpoint'),
                     'started_at': mine.get('started_at'), 'first_new_step': went.get('first_new_step'),
                     'resumed_at': went.get('resumed_at'), 'outcome': 'failed' if error else (
                         'planned' if check_mode else 'resumed'), 'error': error})
    return dict(base, migrations=rows, problems=problems, step=the_layout['step'],
                generation=the_layout['gang']['generation'], master_addr=the_layout['gang']['master_addr'],
                members=the_layout['new_members'], already=bool(the_layout.get('done')))
