# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: migration_moved
short_description: Where each sealed checkpoint of one source ended up
version_added: 1.1.0
author:
- spot.migration contributors (@spot-migration)
description:
- Combines the source's checkpoint, release, retry, relay and restart results into one row per workload.
extends_documentation_fragment:
  - spot.migration.migration_filter
positional: source, checkpoint, release, retry, relay, source_root, restart, assigned
options:
  source:
    description: The source host.
    type: str
    required: true
  checkpoint:
    description: migration_source step=checkpoint's result.
    type: dict
    required: true
  release:
    description: migration_source step=release's result.
    type: dict
    required: true
  retry:
    description: The failover's release result, if any.
    type: dict
  relay:
    description: migration_source step=transfer's result (relay), if any.
    type: dict
  source_root:
    description: The source's checkpoint root.
    type: str
  restart:
    description: The failover's restart-on-source result, if any.
    type: dict
  assigned:
    description: The source's assignments, retries included.
    type: dict
'''

EXAMPLES = r'''
- name: Used by the spot.migration.migrate playbook
  ansible.builtin.set_fact:
    moved: "{{ migrate_plan | spot.migration.migration_moved(inventory_hostname, migrate_checkpoint, migrate_release) }}"
'''

RETURN = r'''
_value:
  description: Rows with C(name), C(migration_id), C(target), C(gpus), C(owner), C(checkpoint), C(staged), C(is_dir),
    C(step), C(spec), C(source_root), C(transfer), C(failed_targets), C(transfer_error).
  type: list
  elements: dict
'''

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.plugin_utils._filters import guard, plain


@guard
def migration_moved(the_plan, source, checkpoint, release, retry=None, relay=None, source_root=None, restart=None,
                    assigned=None):
    return _plan.moved(plain(the_plan), source, plain(checkpoint), plain(release), plain(retry), plain(relay),
                       source_root, plain(restart), plain(assigned))


class FilterModule(object):
    def filters(self):
        return {'migration_moved': migration_moved}
