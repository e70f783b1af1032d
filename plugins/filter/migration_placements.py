# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_placements
short_description: What one target gets
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- The moved rows that landed on O(target) (every target's when omitted).
- With O(the_plan), only while this run still holds each row's migration (its fence); otherwise the filter fails before
  anything starts.
positional: target, the_plan
options:
  _input:
    description: By source, the C(migrate_moved) rows.
    type: dict
    required: true
  target:
    description: The target host.
    type: str
  the_plan:
    description: 'The run''s plan, as the spot.migration.migrate role''s C(plan) entry point sets it (C(migrate_plan)):
      C(sources), C(by_source), C(candidates), C(transfer), C(target), C(exclude).'
    type: dict
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    placements: "{{ moved_by_source | spot.migration.migration_placements(inventory_hostname, migrate_plan) }}"
'''

RETURN = r'''
_value:
  description: Rows as migration_target step=place takes them.
  type: list
  elements: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_placements(moved_by_source, target=None, the_plan=None):
    return _plan.placements(plain(moved_by_source), target, plain(the_plan) if the_plan is not None else None)


class FilterModule(object):
    def filters(self):
        return {'migration_placements': migration_placements}
