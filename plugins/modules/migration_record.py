#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: migration_record
short_description: End a migrate run - release its reservations and write its migration records
version_added: 1.1.0
description:
  - Releases the reservations the run made (its started workloads hold their GPUs now; failed ones hold nothing) and
    writes one JSON record per source's migration that moved anything, as C(<record_dir>/<id>.json), each through a
    temporary file and a rename, so a reader never sees half a record. Every id is checked before anything is written.
  - Run on the controller (as the M(spot.migration.migrate) playbook does), it runs inside Ansible's own worker
    process - no interpreter started, no module shipped; on any other host it runs as a module there.
author:
  - spot.migration contributors (@spot-migration)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  records:
    description: The records, as the C(spot.migration.migration_records) filter builds them.
    type: list
    elements: dict
    required: true
  record_dir:
    description: Where the records go (made, mode 0750, when missing).
    type: path
    required: true
  reservation_file:
    description: The reservation file; nothing is released without it.
    type: path
  release:
    description: Reservations to release, each with its C(owner) (the joint reservation's C(reservations)).
    type: list
    elements: dict
    default: []
'''

EXAMPLES = r'''
- name: Release the run's reservations and write its records
  spot.migration.migration_record:
    records: "{{ migrate_plan | spot.migration.migration_records(hostvars, ansible_check_mode, reservations) }}"
    record_dir: "{{ migrate_plan.record_dir }}"
    reservation_file: "{{ migrate_plan.reservation_file }}"
    release: "{{ reservations }}"
  register: migrate_written
'''

RETURN = r'''
records:
  description: The records, as given (the tasks after this one report and alert from them).
  returned: always
  type: list
  elements: dict
written:
  description: The record files written (would be, in check mode).
  returned: always
  type: list
  elements: str
released:
  description: How many reservations were released.
  returned: always
  type: int
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._record import MODULE_SPEC, finish


def main():
    module = AnsibleModule(supports_check_mode=True, **MODULE_SPEC)
    with fail_on_exception(module):
        result = finish(module.params, module.check_mode)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
