# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_failed_transfers
short_description: The sources of a migrate run whose transfer failed
version_added: 1.2.0
author:
- spot.migration contributors (@spot-migration)
description:
- The sources whose first transfer left a checkpoint unmoved (C(failed_transfers) in the relay's result where the
  relay ran, else in the release's) - the hosts of the failover play, so the other sources are not asked.
positional: sources
options:
  _input:
    description: Ansible's C(hostvars) (only C(migrate_release) and C(migrate_relay) are read).
    type: dict
    required: true
  sources:
    description: The run's sources.
    type: list
    elements: str
    required: true
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.debug:
    msg: "{{ hostvars | spot.migration.migration_failed_transfers(migrate_plan.sources) }}"
'''

RETURN = r'''
_value:
  description: Host names, in the order of O(sources).
  type: list
  elements: str
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, host_vars


@guard
def migration_failed_transfers(hostvars, sources):
    sources = list(sources or [])
    return _plan.failed_transfers(host_vars(hostvars, sources, ('migrate_release', 'migrate_relay')), sources)


class FilterModule(object):
    def filters(self):
        return {'migration_failed_transfers': migration_failed_transfers}
