# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_candidates
short_description: The candidate targets as described by migration_target step=describe
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- Every candidate of the plan that was described (C(migrate_described) registered on it, or the results of a loop that
  described more of them); one that could not be asked (unreachable, failed) is blind; one not asked is left out.
extends_documentation_fragment:
  - spot.migration.migration_filter
  - spot.migration.migration_filter.hostvars
positional: hostvars, groups, more
options:
  groups:
    description: Ansible's C(groups).
    type: dict
    required: true
  more:
    description: Results of a loop that described further candidates (each with its C(item)).
    type: list
    elements: dict
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    candidates: "{{ migrate_plan | spot.migration.migration_candidates(hostvars, groups) }}"
'''

RETURN = r'''
_value:
  description: 'Candidates as M(spot.migration.target_reservation) takes them: C(host), C(gpus), C(free_gpus), C(lifecycle),
    C(evicting), C(blind).'
  type: list
  elements: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, host_vars, plain


@guard
def migration_candidates(the_plan, hostvars, groups, more=None):
    the_plan = plain(the_plan)
    return _plan.candidates(the_plan, host_vars(hostvars, the_plan['candidates']), plain(groups), plain(more))


class FilterModule(object):
    def filters(self):
        return {'migration_candidates': migration_candidates}
