# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_requests
short_description: The joint reservation's requests, one per workload of every source
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- One request per workload of every source whose checkpoint step answered, with its owner (the migration id and workload),
  its GPU count and the hosts it must not go to.
- With O(unplaced) (an earlier round's reservations), only those that round could not place.
extends_documentation_fragment:
  - spot.migration.migration_filter
positional: checkpoints, unplaced
options:
  checkpoints:
    description: By source, what migration_source step=checkpoint returned (see P(spot.migration.migration_gather#filter)).
    type: dict
    required: true
  unplaced:
    description: An earlier round's reservations (M(spot.migration.target_reservation)'s C(reservations)).
    type: list
    elements: dict
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    requests: "{{ migrate_plan | spot.migration.migration_requests(checkpoints) }}"
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
def migration_requests(the_plan, checkpoints, unplaced=None):
    return _plan.requests(plain(the_plan), plain(checkpoints), plain(unplaced))


class FilterModule(object):
    def filters(self):
        return {'migration_requests': migration_requests}
