# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: rebase_paths
short_description: Move a workload spec's paths from one checkpoint root to another
version_added: 1.0.0
author:
  - spot.migration contributors (@spot-migration)
description:
  - Replaces the prefix O(old) by O(new) in every string of a nested structure (a workload spec), where the string is
    O(old) itself or starts with O(old) followed by C(/). Used when nodes keep checkpoints under different roots.
positional: old, new
options:
  _input:
    description: The structure (dict, list or string).
    type: raw
    required: true
  old:
    description: The source root. Nothing changes when it is empty or equal to O(new).
    type: str
    required: true
  new:
    description: The target root.
    type: str
    required: true
'''

EXAMPLES = r'''
- name: The spec as it must run on the target
  ansible.builtin.set_fact:
    target_spec: "{{ spec | spot.migration.rebase_paths(hostvars[source].spot_checkpoint_root, spot_checkpoint_root) }}"
'''

RETURN = r'''
_value:
  description: The structure with the paths moved.
  type: raw
'''


from ansible_collections.spot.migration.plugins.module_utils._migration import rebase


def rebase_paths(value, old, new):
    return rebase(value, old, new)


class FilterModule(object):
    def filters(self):
        return {'rebase_paths': rebase_paths}
