# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_records
short_description: One record per source's migration
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- A row per workload with its timeline (notice, checkpoint verified, target chosen, transferred, verified on the target,
  started, resumed), its outcome and its errors.
extends_documentation_fragment:
  - spot.migration.migration_filter
  - spot.migration.migration_filter.hostvars
positional: hostvars, check_mode, reservations
options:
  check_mode:
    description: Whether the run is in check mode.
    type: bool
    required: true
  reservations:
    description: The run's reservations.
    type: list
    elements: dict
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    records: "{{ migrate_plan | spot.migration.migration_records(hostvars, ansible_check_mode, migrate_reservations) }}"
'''

RETURN = r'''
_value:
  description: Records as M(spot.migration.migration_record) writes them.
  type: list
  elements: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, host_vars, plain


@guard
def migration_records(the_plan, hostvars, check_mode, reservations=None):
    the_plan = plain(the_plan)
    moved = _plan.gather(host_vars(hostvars, the_plan['sources'], ('migrate_moved',)), the_plan['sources'],
                         'migrate_moved')
    known = host_vars(hostvars, the_plan['sources'] + _plan.targets(moved))
    return _plan.records(the_plan, check_mode, _plan.per_source(the_plan, known, plain(reservations)))


class FilterModule(object):
    def filters(self):
        return {'migration_records': migration_records}
