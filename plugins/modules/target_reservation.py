#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: target_reservation
short_description: Choose a target host for a workload and reserve its GPUs, atomically
version_added: 1.0.0
description:
  - "Runs on the controller (C(delegate_to: localhost)). Under an exclusive lock on the reservation file it ranks the
    candidates as the P(spot.migration.pick_target#filter) filter does, leaving out GPUs other migrations hold, and
    records the chosen GPUs for O(owner), so two migrations running at the same time never pick the same GPUs."
  - Re-running with the same O(owner) returns the reservation already held, unchanged.
  - Reservations expire after O(ttl) seconds, so a crashed migration does not hold GPUs forever.
author:
  - spot.migration contributors (@spot-migration)
extends_documentation_fragment:
  - spot.migration.attributes
attributes:
  diff_mode:
    support: none
options:
  path:
    description: Reservation file on the controller.
    type: path
    required: true
  owner:
    description: Who holds the reservation (a migration id and workload).
    type: str
    required: true
  state:
    description: V(present) chooses and reserves; V(absent) releases.
    type: str
    choices: [present, absent]
    default: present
  candidates:
    description: Candidate hosts (see P(spot.migration.pick_target#filter)).
    type: list
    elements: dict
    default: []
  gpus:
    description: GPUs needed.
    type: int
    default: 1
  min_free_memory_mb:
    description: Free memory each GPU must have.
    type: int
    default: 0
  exclude:
    description: Hosts never to pick.
    type: list
    elements: str
    default: []
  target:
    description: Use this host (it must still qualify) instead of the best ranked one.
    type: str
  adopt:
    description:
      - Another owner's reservation to take over (the watcher's pre-reserved next target, C(replica/<workload>)),
        when its host still qualifies; otherwise it is left alone and a target is chosen as usual.
    type: str
  ttl:
    description: Seconds the reservation is held.
    type: float
    default: 900
'''

EXAMPLES = r'''
- name: Reserve GPUs on the best target
  spot.migration.target_reservation:
    path: ~/.local/state/spot-migration/reservations.json
    owner: "{{ migration_id }}/trainer"
    candidates: "{{ candidates }}"
    gpus: 2
    exclude: ["{{ source }}"]
  delegate_to: localhost
  register: reservation
'''

RETURN = r'''
target:
  description: The chosen host.
  returned: state=present
  type: str
gpus:
  description: The GPU indices reserved on it.
  returned: state=present
  type: list
  elements: int
ranked:
  description: Every qualifying host, best first.
  returned: state=present
  type: list
  elements: dict
rejected:
  description: Every other host with the reason.
  returned: always
  type: list
  elements: dict
adopted:
  description: The owner whose reservation was taken over (see O(adopt)); absent when none was.
  returned: when a reservation was adopted
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._placement import release, reserve


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            owner=dict(type='str', required=True),
            state=dict(type='str', default='present', choices=['present', 'absent']),
            candidates=dict(type='list', elements='dict', default=[]),
            gpus=dict(type='int', default=1),
            min_free_memory_mb=dict(type='int', default=0),
            exclude=dict(type='list', elements='str', default=[]),
            target=dict(type='str'),
            ttl=dict(type='float', default=900.0),
            adopt=dict(type='str'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    with fail_on_exception(module):
        if p['state'] == 'absent':
            result = release(p['path'], p['owner'], module.check_mode)
            result['rejected'] = []
        else:
            result = reserve(p['path'], p['owner'], p['candidates'], p['gpus'], p['min_free_memory_mb'], p['exclude'],
                             p['ttl'], p['target'], module.check_mode, adopt=p['adopt'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
