# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_retry_requests
short_description: Reservation requests for workloads whose transfer failed
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- The same owner, released first, the failed target excluded.
extends_documentation_fragment:
  - spot.migration.migration_filter
positional: source, release, assigned
options:
  source:
    description: The source host.
    type: str
    required: true
  release:
    description: What migration_source step=release returned on that source.
    type: dict
    required: true
  assigned:
    description: The source's assignments so far.
    type: dict
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    requests: "{{ migrate_plan | spot.migration.migration_retry_requests(inventory_hostname, migrate_release) }}"
'''

RETURN = r'''
_value:
  description: Requests as M(spot.migration.target_reservation) takes them.
  type: list
  elements: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_retry_requests(the_plan, source, release, assigned=None):
    return _plan.retry_requests(plain(the_plan), source, plain(release), plain(assigned))


class FilterModule(object):
    def filters(self):
        return {'migration_retry_requests': migration_retry_requests}
