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


def _rebase(value, old, new):
    if isinstance(value, dict):
        return dict((k, _rebase(v, old, new)) for k, v in value.items())
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, str):
        if value == old:
            return new
        if value.startswith(old + '/'):
            return new + value[len(old):]
        if '=' in value:
            # --flag=/old/root/x
            head, _sep, tail = value.partition('=')
            if tail == old or tail.startswith(old + '/'):
                return head + '=' + new + tail[len(old):]
    return value


def rebase_paths(value, old, new):
    old = (old or '').rstrip('/')
    new = (new or '').rstrip('/')
    if not old or old == new:
        return value
    return _rebase(value, old, new)


class FilterModule(object):
    def filters(self):
        return {'rebase_paths': rebase_paths}
