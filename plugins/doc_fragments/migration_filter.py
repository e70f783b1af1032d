# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):

    # The migrate playbook's filters that take the run's plan as their input.
    DOCUMENTATION = r'''
options:
  _input:
    description:
      - The run's plan, as the spot.migration.migrate role's C(plan) entry point sets it (C(migrate_plan)) with
        P(spot.migration.migration_plan#filter) - C(sources), C(by_source), C(candidates), C(transfer), C(target),
        C(exclude).
    type: dict
    required: true
'''

    # ... and those that read other hosts' variables.
    HOSTVARS = r'''
options:
  hostvars:
    description: Ansible's C(hostvars) (only the connection variables and the registered results named here are read).
    type: dict
    required: true
'''
