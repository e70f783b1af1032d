# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_fence_holds
short_description: Does this run still hold the migration?
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- True when the fence file holds this run's fence token, or when the migration has no fence file.
options:
  _input:
    description: One source's entry of the plan (C(by_source[host])), with C(fence_file) and C(fence).
    type: dict
    required: true
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    holds: "{{ migrate_plan.by_source[inventory_hostname] | spot.migration.migration_fence_holds }}"
'''

RETURN = r'''
_value:
  description: Whether the run may go on.
  type: bool
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_fence_holds(entry):
    return _plan.fence_holds(plain(entry))


class FilterModule(object):
    def filters(self):
        return {'migration_fence_holds': migration_fence_holds}
