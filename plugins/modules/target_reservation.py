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
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  path:
    description: Reservation file on the controller.
    type: path
    required: true
  owner:
    description: Who holds the reservation (a migration id and workload). Required unless O(requests) is given.
    type: str
  requests:
    description:
      - A joint reservation for many workloads at once (a wave of evictions), made in order under the lock so that no
        GPU is promised twice. Each item has C(owner), C(gpus), and optionally C(name), C(exclude), C(target), C(adopt),
        as the options of the same names, and C(apart) - requests with the same C(apart) value never share a host
        (the members of a gang).
      - A request that cannot be met comes back with its C(error) and does not stop the others.
      - With O(state=absent), each C(owner) is released.
    type: list
    elements: dict
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
  contains:
    host: {description: The host., type: str}
    gpus: {description: The GPU indices it would give., type: list, elements: int}
    lifecycle: {description: "C(on-demand), C(standby) or C(spot).", type: str}
    free_memory_mb: {description: Free memory of its usable GPUs together., type: int}
    free_gpus: {description: How many usable free GPUs it has., type: int}
    at_risk: {description: "It had an early warning (ranked after the others of its kind).", type: bool}
rejected:
  description: Every other host with the reason.
  returned: always
  type: list
  elements: dict
  contains:
    host: {description: The host., type: str}
    reason: {description: "Why it cannot take the workload (its GPUs, a notice of its own, blind, the container image).", type: str}
adopted:
  description: The owner whose reservation was taken over (see O(adopt)); absent when none was.
  returned: when a reservation was adopted
  type: str
reservations:
  description: With O(requests), one result per request, in order.
  returned: when O(requests) is given
  type: list
  elements: dict
  contains:
    owner: {description: The request's owner., type: str}
    name: {description: The request's name (a workload)., type: str}
    target: {description: The chosen host (null when none could take it)., type: str}
    gpus: {description: The GPU indices reserved., type: list, elements: int}
    error: {description: Why no target could take it (null when one did)., type: str}
    ranked: {description: "Every qualifying host, best first.", type: list, elements: dict}
    rejected: {description: Every other host with the reason., type: list, elements: dict}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._placement import MODULE_SPEC, run_reservation


def main():
    module = AnsibleModule(supports_check_mode=True, **MODULE_SPEC)
    with fail_on_exception(module):
        result = run_reservation(module.params, module.check_mode)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
