# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Gangs: one job whose ranks run on several nodes (torchrun / torch.distributed). Pure data, no I/O: the gang's
description (``check_gang``), the environment each member gets (``gang_env``), a member's workload name, and the plan
of a gang migration (``gang_plan``: the step every member holds, the new layout with replacements for the evicted
members and a new rendezvous). Used by the workload module (nodes), the gang_member module and the controller's
filters; no Ansible imports.

A gang of ``size`` members, member ``rank`` r running ``nproc_per_node`` processes: each member is a workload named
``<gang>.<r>`` on its own node, with the rendezvous in its environment. ``members`` lists the gang's hosts by rank;
``master_addr`` is member 0's address; ``generation`` counts the gang's restarts (a new rendezvous each time);
``layout`` says where the gang's checkpoint is: ``member`` (each member's part in its own checkpoint directory, on its
own disk) or ``shared`` (one directory on storage every member mounts at the same path).
"""

from __future__ import absolute_import, division, print_function

import re

__metaclass__ = type

GANG_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$')
HOST_RE = re.compile(r'^[A-Za-z0-9_.:\[\]-]{1,253}$')
GANG_KEYS = ('name', 'size', 'rank', 'nproc_per_node', 'master_addr', 'master_port', 'generation', 'members', 'layout')
LAYOUTS = ('member', 'shared')


class GangError(Exception):
    """A gang's description or plan is wrong; the message names the value at fault."""

    def __init__(self, message, **details):
        super(GangError, self).__init__(message)
        self.details = details


def _int(gang, key, low, high, default=None):
    value = gang.get(key, default)
    try:
        number = int(value)
        if isinstance(value, bool) or float(value) != number:
            raise ValueError(value)
    except (TypeError, ValueError):
        raise GangError('gang %s must be a whole number, not %r' % (key, value))
    if not low <= number <= high:
        raise GangError('gang %s must be between %d and %d, not %r' % (key, low, high, value))
    return number


def check_gang(gang):
    """The gang description, checked and normalised (every key of GANG_KEYS); a GangError names the value at fault."""
    if not isinstance(gang, dict):
        raise GangError('gang must be a dict with %s, not %r' % (', '.join(GANG_KEYS), gang))
    unknown = sorted(set(gang) - set(GANG_KEYS))
    if unknown:
        raise GangError('gang has unknown keys %s (known: %s)' % (', '.join(unknown), ', '.join(GANG_KEYS)))
    name = gang.get('name')
    if not isinstance(name, str) or not GANG_NAME_RE.match(name):
        raise GangError('gang name %r is not allowed: letters, digits, "_" and "-", up to 41, starting with a letter '
                        'or digit' % (name,))
    size = _int(gang, 'size', 1, 4096)
    rank = _int(gang, 'rank', 0, size - 1)
    out = {'name': name, 'size': size, 'rank': rank,
           'nproc_per_node': _int(gang, 'nproc_per_node', 1, 1024, 1),
           'master_port': _int(gang, 'master_port', 1, 65535, 29500),
           'generation': _int(gang, 'generation', 0, 10 ** 9, 0)}
    master = gang.get('master_addr')
    if not isinstance(master, str) or not HOST_RE.match(master):
        raise GangError('gang master_addr %r is not a host name or address' % (master,))
    out['master_addr'] = master
    members = gang.get('members') or []
    if not isinstance(members, list) or any(not isinstance(m, str) or not HOST_RE.match(m) for m in members):
        raise GangError('gang members must be a list of host names, not %r' % (members,))
    if members and len(members) != size:
        raise GangError('gang %s lists %d members for size %d: %s' % (name, len(members), size, ', '.join(members)))
    if len(set(members)) != len(members):
        raise GangError('gang %s names a host twice among its members: %s' % (name, ', '.join(members)))
    out['members'] = list(members)
    layout = gang.get('layout') or 'member'
    if layout not in LAYOUTS:
        raise GangError('gang layout must be member (each member its own part, on its own disk) or shared (one '
                        'directory every member mounts), not %r' % (layout,))
    out['layout'] = layout
    return out


def member_name(gang, rank):
    """The workload name of member ``rank`` of gang ``gang`` (a name)."""
    return '%s.%d' % (gang, int(rank))


def gang_env(gang):
    """The environment of one member: what torch.distributed reads directly (one process per member) and what
    torchrun reads (``PET_*``); ``RANK``/``WORLD_SIZE`` only with one process per member (torchrun sets them for
    each process it starts)."""
    g = check_gang(gang)
    env = {
        'SPOT_GANG': g['name'], 'SPOT_GANG_GENERATION': str(g['generation']), 'SPOT_GANG_LAYOUT': g['layout'],
        'MASTER_ADDR': g['master_addr'], 'MASTER_PORT': str(g['master_port']),
        'NNODES': str(g['size']), 'NODE_RANK': str(g['rank']), 'NPROC_PER_NODE': str(g['nproc_per_node']),
        'PET_NNODES': str(g['size']), 'PET_NODE_RANK': str(g['rank']),
        'PET_NPROC_PER_NODE': str(g['nproc_per_node']),
        'PET_MASTER_ADDR': g['master_addr'], 'PET_MASTER_PORT': str(g['master_port']),
        'TORCHELASTIC_RUN_ID': '%s-%d' % (g['name'], g['generation']),
    }
    if g['nproc_per_node'] == 1:
        env.update({'RANK': str(g['rank']), 'WORLD_SIZE': str(g['size']), 'LOCAL_RANK': '0',
                    'LOCAL_WORLD_SIZE': '1'})
    return env


def common_step(parts):
    """The newest step every member holds complete: ``parts`` maps each member (rank) to the steps it holds."""
    held = None
    for rank in sorted(parts):
        steps = set(int(s) for s in parts[rank] or [])
        held = steps if held is None else held & steps
    if not held:
        raise GangError('no step is complete on every member (%s)'
                        % '; '.join('%s: %s' % (r, sorted(parts[r] or []) or 'none') for r in sorted(parts)))
    return max(held)


def new_layout(gang, evicted, replacements, addresses):
    """The gang after a migration: ``evicted`` members' ranks go to their ``replacements`` (host -> host), the master
    is member 0's address (``addresses``: host -> address), the generation goes up by one. Returns the gang
    description without ``rank`` (each member adds its own)."""
    g = check_gang(dict(gang, rank=0))
    members = list(g['members'])
    for host in evicted:
        if host not in members:
            raise GangError('%s is not a member of gang %s (members: %s)' % (host, g['name'], ', '.join(members)))
        target = replacements.get(host)
        if not target:
            raise GangError('no replacement for %s, evicted member of gang %s' % (host, g['name']))
        if target in members:
            raise GangError('the replacement %s of %s is already a member of gang %s' % (target, host, g['name']))
        members[members.index(host)] = target
    out = dict(g, members=members, generation=g['generation'] + 1, master_addr=addresses.get(members[0], members[0]))
    out.pop('rank')
    return out
