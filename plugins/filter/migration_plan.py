# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_plan
short_description: Check and normalise the migrate playbook's variables into the run's plan
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- 'Checks C(source) (one host, a list or a comma-separated string for a wave of evictions) and the per-source values (top
  level, or under C(migrations)) where they enter: every id and name that becomes a path, every host against the inventory.'
- Fails naming the variable and its value when one is wrong.
positional: groups
options:
  _input:
    description: The playbook's variables (C(vars)).
    type: dict
    required: true
  groups:
    description: Ansible's C(groups).
    type: dict
    required: true
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    migrate_plan: "{{ vars | spot.migration.migration_plan(groups) }}"
'''

RETURN = r'''
_value:
  description: C(sources), C(by_source) (per source its migration id, workloads, deadline, fence), C(candidates), C(first_candidates),
    C(later_candidates), C(transfer), C(target), C(exclude), C(reservation_file), C(safety_margin), C(default_deadline),
    C(resume_timeout).
  type: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_plan(variables, groups):
    return _plan.plan(plain(variables), plain(groups))


class FilterModule(object):
    def filters(self):
        return {'migration_plan': migration_plan}
