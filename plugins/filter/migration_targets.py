# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_targets
short_description: The hosts that get a checkpoint
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- The sorted targets of every moved row that landed (no error, not restarted on its source).
options:
  _input:
    description: By source, the C(migrate_moved) rows (see P(spot.migration.migration_gather#filter)).
    type: dict
    required: true
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    targets: "{{ hostvars | spot.migration.migration_gather(sources, 'migrate_moved') | spot.migration.migration_targets }}"
'''

RETURN = r'''
_value:
  description: Host names.
  type: list
  elements: str
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_targets(moved_by_source):
    return _plan.targets(plain(moved_by_source))


class FilterModule(object):
    def filters(self):
        return {'migration_targets': migration_targets}
