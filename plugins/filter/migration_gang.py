# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_gang
short_description: The controller's side of a gang migration (the migrate_gang playbook's wiring)
version_added: 1.3.0
author:
- spot.migration contributors (@spot-migration)
description:
- One filter for every controller-side step of the C(spot.migration.migrate_gang) playbook; the logic is in
  C(module_utils/_gang_plan.py).
- V(plan) - the run's plan from its variables (O(_input) is a dict of the playbook's variables, O(hostvars) is
  C(groups)).
- V(members) - the gang's members by rank.
- V(hosts) - the members and the candidates for a replacement (the first play's hosts).
- V(replicas) - what one host (O(extra)) lists as the replica node of lost members.
- V(requests) - a reservation request per evicted member.
- V(candidates) - the described candidates for a replacement.
- V(layout) - the step every member holds, a replacement per evicted member, the new rendezvous (O(extra) is the
  reservations); fails, naming the reason, before anything is stopped.
- V(placements) - what one new member (O(extra) is its host) starts (O(_input) is the layout, O(plan) the plan).
- V(record) - the run's record (O(_input) is the layout or none, O(plan) the plan, O(extra) check mode).
positional: what, hostvars, extra, plan
options:
  _input:
    description: The plan (or the variables, for V(plan); the layout, for V(placements) and V(record)).
    type: raw
    required: true
  what:
    description: Which step.
    type: str
    required: true
    choices: [plan, members, hosts, replicas, requests, candidates, layout, placements, record]
  hostvars:
    description: Ansible's C(hostvars) (C(groups) for V(plan)).
    type: dict
    required: true
  extra:
    description: The reservations (V(layout)), the host (V(placements), V(replicas)), check mode (V(record)).
    type: raw
  plan:
    description: The run's plan (V(placements), V(record)).
    type: dict
'''

EXAMPLES = r'''
- name: Plan the run (see the spot.migration.migrate_gang playbook)
  ansible.builtin.set_fact:
    migrate_gang: >-
      {{ {'gang': gang, 'source': source, 'spot_reservation_file': '/tmp/r.json', 'spot_record_dir': '/tmp/records'}
         | spot.migration.migration_gang('plan', groups) }}
'''

RETURN = r'''
_value:
  description: The plan, a list of hosts, the requests, the candidates, the layout, one placement list or the record.
  type: raw
'''

from ansible_collections.spot.migration.plugins.module_utils import _gang_plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, host_vars, plain

NAMES = ('ansible_host', 'ansible_port', 'spot_checkpoint_root', 'spot_ssh_config', 'spot_gang_address',
         'gang_described', 'gang_checkpoint', 'gang_release', 'gang_replica', 'migrate_described', 'migrate_placed',
         'migrate_progress')


@guard
def migration_gang(value, what, hostvars, extra=None, plan=None):
    if what == 'plan':
        return _gang_plan.plan(plain(value), plain(hostvars))
    value, plan = plain(value), plain(plan)
    if what in ('placements', 'record'):
        hosts = (value or {}).get('old_members', []) + (value or {}).get('new_members', []) if value else []
        hv = host_vars(hostvars, hosts, NAMES)
        if what == 'placements':
            return _gang_plan.placements(value, plan, hv, extra)
        return _gang_plan.record(plan, value, hv, bool(extra))
    if what == 'replicas':
        return _gang_plan.replica_lists(value, extra)
    holders = [r['host'] for r in (value.get('lost_replicas') or {}).values()]
    hv = host_vars(hostvars, value['sources'] + (value.get('members') or []) + value['pool'] + holders, NAMES)
    found = _gang_plan.members(value, hv)
    hv.update(host_vars(hostvars, [h for h in found if h not in hv], NAMES))
    if what == 'members':
        return found
    if what == 'hosts':
        return _gang_plan.checkpoint_hosts(value, hv)
    if what == 'requests':
        return _gang_plan.requests(value, hv)
    if what == 'candidates':
        return _gang_plan.candidates(value, hv)
    if what == 'layout':
        return _gang_plan.layout(value, hv, plain(extra))
    raise _gang_plan.MigrationError('migration_gang: unknown step %r' % (what,))


class FilterModule(object):
    def filters(self):
        return {'migration_gang': migration_gang}
