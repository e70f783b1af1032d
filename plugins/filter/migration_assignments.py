# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_assignments
short_description: Where each workload of one source goes, from the joint reservation
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- Per workload its target as an SSH endpoint, its GPUs, its owner and the replica's root.
- Only while this run still holds the migration (its fence file has this run's token); otherwise the filter fails, so
  the task that would stop the source copy fails before it starts.
positional: source, reservations, hostvars, controller
options:
  _input:
    description: 'The run''s plan, as M(spot.migration.migrate) role''s C(plan) entry point sets it (C(migrate_plan)):
      C(sources), C(by_source), C(candidates), C(transfer), C(target), C(exclude).'
    type: dict
    required: true
  source:
    description: The source host.
    type: str
    required: true
  reservations:
    description: M(spot.migration.target_reservation)'s C(reservations).
    type: list
    required: true
    elements: dict
  hostvars:
    description: Ansible's C(hostvars) (only the connection variables and the registered results named here are read).
    type: dict
    required: true
  controller:
    description: Endpoints as the controller reaches them (relay) instead of as the source does.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    assignments: "{{ migrate_plan | spot.migration.migration_assignments(inventory_hostname, reservations, hostvars) }}"
'''

RETURN = r'''
_value:
  description: 'C({workload: {name, host, ssh, root, gpus, owner, replica_root}}).'
  type: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, host_vars, plain


@guard
def migration_assignments(the_plan, source, reservations, hostvars, controller=False):
    reservations = plain(reservations) or []
    hosts = [source] + [r.get('target') for r in reservations]
    return _plan.assignments(plain(the_plan), source, reservations, host_vars(hostvars, hosts), controller)


class FilterModule(object):
    def filters(self):
        return {'migration_assignments': migration_assignments}
