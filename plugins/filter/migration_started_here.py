# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_started_here
short_description: The workloads of a source that now run on their targets
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- Those to remove from the source.
positional: source
options:
  _input:
    description: By target, migration_target step=place's results.
    type: dict
    required: true
  source:
    description: The source host.
    type: str
    required: true
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    gone: "{{ placed_by_target | spot.migration.migration_started_here(inventory_hostname) }}"
'''

RETURN = r'''
_value:
  description: C([{name}]).
  type: list
  elements: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_started_here(placed_by_target, source):
    return _plan.started_here(plain(placed_by_target), source)


class FilterModule(object):
    def filters(self):
        return {'migration_started_here': migration_started_here}
