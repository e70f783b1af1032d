# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gang_member: one member of a gang on its node, in coarse steps - whoever runs it, the module (AnsibleModule) or its
action plugin's lean run (the standard library alone on the node).

* ``describe``: the member of the gang here and the gang as it stands (its members, master, generation);
* ``checkpoint``: ask the member for a checkpoint (the job saves together: every rank at the same step) and wait for
  a complete one newer than the request; returns every step this member holds complete, from which the controller
  takes the newest step every member holds. Nothing is stopped;
* ``release``: stop the member (SIGKILL: its part of the gang checkpoint is complete, and its peers may already be
  gone), seal its part of ``step``, and - an evicted member - push it to its replacement's staging directory.

Starting the gang again is ``migration_target step=place`` on every new member (a survivor resumes from its own part,
a replacement from the verified copy), progress is ``migration_target step=progress``."""

from __future__ import absolute_import, division, print_function

import os

from ._checkpoint import complete_checkpoints, seal
from ._common import stdlib_node
from ._gang import check_gang
from ._migration import MigrationError, check_id, check_root, drivers, iso, list_workloads, push_one
from ._transfer import PREFERRED_CIPHERS, create_transfer
from ._workload import WorkloadError, ensure_checkpointed, ensure_stopped

__metaclass__ = type

GANG_SPEC = dict(
    argument_spec=dict(
        step=dict(type='str', required=True, choices=['describe', 'checkpoint', 'release', 'replica']),
        gang=dict(type='str', required=True),
        migration_id=dict(type='str'),
        host=dict(type='str', required=True),
        deadline=dict(type='float', default=30.0),
        signalled_at=dict(type='float'),
        ask=dict(type='bool', default=True),
        replicas=dict(type='list', elements='dict', default=[]),
        checkpoint_step=dict(type='int'),
        seal=dict(type='bool', default=True),
        target=dict(type='dict'),
        ssh_ciphers=dict(type='str', default=PREFERRED_CIPHERS),
        bwlimit=dict(type='int', default=0),
        workload_root=dict(type='path'),
        container_cli=dict(type='path'),
    ),
    required_if=[('step', 'checkpoint', ['migration_id']), ('step', 'release', ['migration_id', 'checkpoint_step'])],
)


def find_member(by_runtime, gang, host):
    """This node's member of ``gang`` (its workload, with ``spec``); MigrationError naming what runs here if none."""
    found = list_workloads(by_runtime)
    mine = [w for w in found if ((w.get('spec') or {}).get('gang') or {}).get('name') == gang]
    if not mine:
        raise MigrationError('no member of gang %s on %s (workloads here: %s)'
                             % (gang, host, ', '.join(w['name'] for w in found) or 'none'))
    if len(mine) > 1:
        raise MigrationError('%d members of gang %s on %s (%s): a gang has one member per node'
                             % (len(mine), gang, host, ', '.join(w['name'] for w in mine)))
    member = mine[0]
    member['gang'] = check_gang(member['spec']['gang'])
    return member


def held_steps(directory):
    """``{step: complete_checkpoints' row}`` of every complete, numbered checkpoint in ``directory``."""
    return dict((int(c['step']), c) for c in complete_checkpoints(directory) if c.get('step') is not None)


def gang_checkpoint(by_runtime, gang, migration_id, host, deadline, signalled_at, check_mode, ask=True):
    """Ask this member for a checkpoint and wait up to ``deadline`` s for a complete one newer than the request
    (``ask=False``: only say which steps it holds - a member whose peer was lost cannot save with it)."""
    migration_id = check_id(migration_id)
    member = find_member(by_runtime, gang, host)
    directory = member['spec'].get('checkpoint_dir')
    if not directory:
        raise MigrationError('member %s of gang %s has no checkpoint_dir: nothing to resume from' % (member['name'], gang))
    row = {'name': member['name'], 'rank': member['gang']['rank'], 'runtime': member['runtime'],
           'running': member['running'], 'spec': member['spec'], 'checkpoint_dir': directory}
    changed = False
    if member['running'] and ask:
        try:
            done = ensure_checkpointed(by_runtime[member['runtime']], member['name'], check_mode, deadline=deadline,
                                       signalled_at=signalled_at)
        except WorkloadError as exc:
            # No new part (a peer already gone leaves this rank blocked in a collective): the gang resumes from the
            # newest step every member holds, older than asked for.
            row['emergency_error'] = str(exc)
        else:
            changed = done['changed']
            ckpt = done.get('checkpoint') or {}
            row.update({'emergency_step': ckpt.get('step'), 'emergency_checkpoint': ckpt.get('checkpoint'),
                        'signal': ckpt.get('signal')})
    held = held_steps(directory)
    if not held and not check_mode:
        raise MigrationError('member %s of gang %s on %s holds no complete checkpoint%s'
                             % (member['name'], gang, host, ': ' + row['emergency_error']
                                if row.get('emergency_error') else ''))
    row['steps'] = sorted(held, reverse=True)
    row['checkpointed_at'] = iso()
    return {'changed': changed, 'member': row,
            'migration': {'id': migration_id, 'step': 'checkpointed', 'source': host, 'gang': gang,
                          'workloads': {member['name']: row}}}


def gang_release(by_runtime, run, gang, migration_id, host, step, target, check_mode, ciphers=None, bwlimit=0,
                 sealing_here=True):
    """Stop this member, seal its part of ``step``; with ``target`` (an evicted member's replacement: ``{name, host,
    ssh, root}``), push the part into the target's staging directory, sealing while it is sent. ``sealing_here=False``:
    another member seals it (a gang's one checkpoint on shared storage is sealed once)."""
    migration_id = check_id(migration_id)
    member = find_member(by_runtime, gang, host)
    stopped = ensure_stopped(by_runtime[member['runtime']], member['name'], check_mode, hard=True)
    held = held_steps(member['spec']['checkpoint_dir'])
    if int(step) not in held:
        raise MigrationError('member %s of gang %s on %s holds no complete checkpoint of step %s (it holds %s): the '
                             'gang cannot resume from it' % (member['name'], gang, host, step,
                                                             sorted(held, reverse=True) or 'none'))
    checkpoint = held[int(step)]['checkpoint']
    row = {'name': member['name'], 'rank': member['gang']['rank'], 'checkpoint': checkpoint, 'step': int(step),
           'is_dir': os.path.isdir(checkpoint), 'bytes': held[int(step)]['size_bytes'],
           'stopped_by': stopped.get('stopped_by'), 'spec': member['spec']}

    def sealing():
        if not sealing_here:
            return {'sealed_changed': False, 'verified_at': None}
        sealed = seal(checkpoint, check_mode=check_mode, step=int(step))
        return {'sealed_changed': sealed['changed'], 'verified_at': iso()}

    if not target or check_mode:
        row.update(sealing())
        if target:
            row.update({'target': target.get('name'), 'staged': None, 'transfer': 'rsync'})
        return {'changed': stopped['changed'] or row['sealed_changed'], 'sealed': row,
                'migration': {'id': migration_id, 'step': 'sealed', 'source': host, 'gang': gang,
                              'workloads': {member['name']: row}}}
    transfer = create_transfer('rsync', run, ciphers=ciphers, bwlimit=bwlimit)
    push_one(transfer, row, target, migration_id, run, seal=sealing)
    if row.get('transfer_error'):
        raise MigrationError('member %s of gang %s: the copy to %s failed: %s'
                             % (member['name'], gang, target.get('name'), row['transfer_error']), sealed=row)
    return {'changed': True, 'sealed': row,
            'migration': {'id': migration_id, 'step': 'transferred', 'source': host, 'gang': gang,
                          'workloads': {member['name']: row}}}


def gang_replicas(replicas):
    """The steps the replicas of lost members hold on this node (their replica node): ``{name: {root, steps}}``."""
    from ._replica import replicas as published
    out = {}
    for item in replicas:
        name, root = item.get('name'), item.get('root')
        if not name or not root:
            raise MigrationError('a replica to list needs name and root, not %r' % (item,))
        root = check_root(root, 'replica root of %s' % name)
        out[name] = {'root': root, 'steps': sorted((r['step'] for r in published(root)), reverse=True)}
    return {'changed': False, 'replicas': out}


def gang_step(p, node):
    """One step of gang_member (``p['step']``) on this node."""
    if p['step'] == 'replica':
        return gang_replicas(p['replicas'])
    by_runtime = drivers(node.run, node.which, p['workload_root'], p['container_cli'], warn=node.warn)
    if p['step'] == 'describe':
        member = find_member(by_runtime, p['gang'], p['host'])
        return {'changed': False, 'member': {'name': member['name'], 'running': member['running'],
                                             'runtime': member['runtime']}, 'gang': member['gang']}
    if p['step'] == 'checkpoint':
        return gang_checkpoint(by_runtime, p['gang'], p['migration_id'], p['host'], p['deadline'], p['signalled_at'],
                               node.check_mode, p['ask'])
    return gang_release(by_runtime, node.run, p['gang'], p['migration_id'], p['host'], p['checkpoint_step'],
                        p['target'], node.check_mode, p['ssh_ciphers'], p['bwlimit'], p['seal'])


def lean_gang_step(params, check_mode=False):
    """gang_member's lean run (the action plugin's entry): the standard library alone."""
    node = stdlib_node(check_mode)
    result = gang_step(params, node)
    if node.warnings:
        result['warnings'] = list(result.get('warnings') or []) + node.warnings
    return result
