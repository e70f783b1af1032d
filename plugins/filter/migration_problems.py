# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_problems
short_description: Everything that went wrong in a run, one line each
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- Empty when every workload runs on its target.
positional: check_mode
options:
  _input:
    description: The run's records (see P(spot.migration.migration_records#filter)).
    type: list
    required: true
    elements: dict
  check_mode:
    description: Whether the run is in check mode (nothing is expected to run then).
    type: bool
    required: true
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    problems: "{{ records | spot.migration.migration_problems(ansible_check_mode) }}"
'''

RETURN = r'''
_value:
  description: One line per problem.
  type: list
  elements: str
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_problems(records, check_mode):
    return _plan.problems(plain(records), check_mode)


class FilterModule(object):
    def filters(self):
        return {'migration_problems': migration_problems}
