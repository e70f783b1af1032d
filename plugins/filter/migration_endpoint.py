# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_endpoint
short_description: A node as an SSH destination
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- C(name), C(host), C(ssh) (an argv) and C(root), from the node's connection variables.
extends_documentation_fragment:
  - spot.migration.migration_filter.hostvars
positional: hostvars, controller
options:
  _input:
    description: The inventory host.
    type: str
    required: true
  controller:
    description: As the controller reaches it (true) or as another node does (false).
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    endpoint: "{{ inventory_hostname | spot.migration.migration_endpoint(hostvars, true) }}"
'''

RETURN = r'''
_value:
  description: C(name), C(host), C(ssh), C(root).
  type: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, host_vars


@guard
def migration_endpoint(host, hostvars, controller=False):
    return _plan.endpoint(host, host_vars(hostvars, [host]).get(host), controller=controller)


class FilterModule(object):
    def filters(self):
        return {'migration_endpoint': migration_endpoint}
