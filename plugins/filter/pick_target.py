# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: pick_target
short_description: Rank hosts that could take a workload, best first
version_added: 1.0.0
author:
  - spot.migration contributors (@spot-migration)
description:
  - Takes a list of candidate hosts with their GPU facts and returns the best one, the ranking and why the others
    were rejected.
  - Hosts that are excluded (the source), blind, or under an eviction notice of their own are rejected; so are hosts
    without enough free GPUs (with at least O(min_free_memory_mb) free each, not reserved by other migrations).
  - The rest are ranked on-demand / standby first, candidates with C(at_risk) last of their kind, then by most free
    GPU memory, then by name, so the same inputs always give the same answer.
positional: gpus, min_free_memory_mb, exclude, reservations
options:
  _input:
    description:
      - Candidates, each a dict with C(host), C(free_gpus) and C(gpus) (as M(spot.migration.gpu_info) returns them),
        C(lifecycle) (C(on-demand), C(standby) or C(spot)), C(evicting), C(blind) and C(at_risk) (an early warning,
        an AWS rebalance recommendation, a GCP or Azure maintenance event).
    type: list
    elements: dict
    required: true
  gpus:
    description: GPUs the workload needs.
    type: int
    default: 1
  min_free_memory_mb:
    description: Free memory each of those GPUs must have.
    type: int
    default: 0
  exclude:
    description: Hosts never to pick (the source).
    type: list
    elements: str
    default: []
  reservations:
    description: GPU indices per host already held by other migrations.
    type: dict
    default: {}
'''

EXAMPLES = r'''
- name: Where would this workload go?
  ansible.builtin.debug:
    msg: "{{ candidates | spot.migration.pick_target(gpus=2, exclude=[source]) }}"
'''

RETURN = r'''
_value:
  description: C(target) (a host, or null when none fits), C(gpus) (indices), C(ranked) and C(rejected) (with reasons).
  type: dict
'''

from ansible.errors import AnsibleFilterError

from ansible_collections.spot.migration.plugins.module_utils._placement import rank_candidates


def pick_target(candidates, gpus=1, min_free_memory_mb=0, exclude=None, reservations=None):
    if not isinstance(candidates, list):
        raise AnsibleFilterError('pick_target expects a list of candidate dicts, got %s' % type(candidates).__name__)
    for cand in candidates:
        if not isinstance(cand, dict) or 'host' not in cand:
            raise AnsibleFilterError('pick_target: every candidate needs a "host", got %r' % (cand,))
    ranked, rejected = rank_candidates(candidates, gpus, min_free_memory_mb, exclude or [], reservations or {})
    best = ranked[0] if ranked else None
    return {'target': best['host'] if best else None, 'gpus': best['gpus'] if best else [], 'ranked': ranked,
            'rejected': rejected}


class FilterModule(object):
    def filters(self):
        return {'pick_target': pick_target}
