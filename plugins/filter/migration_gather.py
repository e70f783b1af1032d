# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_gather
short_description: One registered variable of several hosts, by host
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- Reads one variable of each host that has it, for plays that combine what several hosts registered.
positional: hosts, name
options:
  _input:
    description: Ansible's C(hostvars) (only the connection variables and the registered results named here are read).
    type: dict
    required: true
  hosts:
    description: The hosts to read.
    type: list
    required: true
    elements: str
  name:
    description: The variable's name.
    type: str
    required: true
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    checkpoints: "{{ hostvars | spot.migration.migration_gather(migrate_plan.sources, 'migrate_checkpoint') }}"
'''

RETURN = r'''
_value:
  description: 'C({host: value}) for the hosts that have the variable.'
  type: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, host_vars


@guard
def migration_gather(hostvars, hosts, name):
    return _plan.gather(host_vars(hostvars, list(hosts or []), (name,)), list(hosts or []), name)


class FilterModule(object):
    def filters(self):
        return {'migration_gather': migration_gather}
