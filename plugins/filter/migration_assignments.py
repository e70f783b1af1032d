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
extends_documentation_fragment:
  - spot.migration.migration_filter
  - spot.migration.migration_filter.hostvars
positional: source, reservations, hostvars, controller
options:
  source:
    description: The source host.
    type: str
    required: true
  reservations:
    description: M(spot.migration.target_reservation)'s C(reservations).
    type: list
    required: true
    elements: dict
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
