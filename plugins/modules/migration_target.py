#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: migration_target
short_description: The target side of a migration, in coarse steps (describe, place, progress)
version_added: 1.1.0
description:
  - V(describe) says, in one call, what a candidate target offers - its GPUs (free ones included) and, with
    O(check_notice), whether it has an eviction notice of its own - as the placement ranks it. A node whose GPUs or
    metadata service cannot be read is described as blind (with the error), never as free. It changes nothing.
  - V(place) verifies each staged checkpoint against its manifest (every file hashed), renames it into the workload's
    checkpoint directory (atomic renames on one file system; the manifest of a single-file checkpoint first), removes
    the staging directory and starts the workload from it. A copy already in place is verified and left; a workload
    already running with the same spec is left running (idempotent re-runs).
  - V(progress) waits until every workload started here writes a complete checkpoint whose step is beyond the one it
    resumed from (a checkpoint written at start-up of the resumed step is not progress).
  - Paths are checked before anything is written or removed - the staging directory and the final checkpoint must
    stay under their roots. The workload's spec has its paths moved from the source's checkpoint root to this
    node's (not for shared storage).
  - Every result has C(migration), the data the watcher follows (C(id), C(step), C(target), C(workloads)).
author:
  - spot.migration contributors (@spot-migration)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - spot.migration.lean
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  step:
    description: Which step to run.
    type: str
    required: true
    choices: [describe, place, progress]
  migration_id:
    description:
      - The migration's id (the staging directory's name); letters, digits and C(._:+-) only.
      - Required for V(place) and V(progress).
    type: str
  target:
    description: This node's inventory name, for messages and the result.
    type: str
    required: true
  placements:
    description:
      - The workloads to place here, each C({name, checkpoint, is_dir, step, spec, gpus, source_root, transfer}) as the
        source's V(release) step sealed them (see M(spot.migration.migration_source)).
      - C(transfer=replica) resumes from the verified replica under the placement's C(replica_root) on this node; with
        C(store) (an rclone remote, C(name:bucket/prefix), configured on this node) from the newer of that replica and
        the one published in the object store, downloaded, verified against its manifest and renamed into place
        (C(store_transfers) parallel streams, C(store_rclone) the rclone program, default C(rclone) on the PATH).
    type: list
    elements: dict
    default: []
  placed:
    description: The C(placed) result of V(place) (V(progress)).
    type: dict
    default: {}
  checkpoint_root:
    description: This node's checkpoint root (the host variable C(spot_checkpoint_root)).
    type: path
  resume_timeout:
    description: Seconds each resumed workload has to show progress.
    type: float
    default: 120
  workload_root:
    description: Where process workloads keep their state (default as M(spot.migration.workload)).
    type: path
  container_cli:
    description: Path of the container CLI, when not on PATH.
    type: path
  list_images:
    description:
      - V(describe) - also list the container images this node holds (podman or docker, or O(container_cli)), so
        the placement sends a container workload only to a node that has its image, before its source copy is
        stopped. Nothing is listed where neither is installed.
    type: bool
    default: true
  lifecycle:
    description: V(describe) - this node's lifecycle as the placement ranks it (C(on-demand) nodes first).
    type: str
    default: spot
  check_notice:
    description: V(describe) - also read this node's metadata service for a notice of its own (spot nodes).
    type: bool
    default: false
  provider:
    description: V(describe) - the cloud's metadata dialect, as in M(spot.migration.eviction_info).
    type: str
    default: auto
    choices: [auto, aws, gcp, azure]
  metadata_url:
    description: V(describe) - the metadata service's base URL, as in M(spot.migration.eviction_info).
    type: str
'''

EXAMPLES = r'''
- name: Describe a candidate target
  spot.migration.migration_target:
    step: describe
    target: "{{ inventory_hostname }}"
    check_notice: "{{ inventory_hostname in groups['spot'] }}"
  register: described

- name: Verify, put in place and start
  spot.migration.migration_target:
    step: place
    migration_id: "{{ migration_id }}"
    target: "{{ inventory_hostname }}"
    placements: "{{ placements }}"
    checkpoint_root: "{{ spot_checkpoint_root }}"
  register: placed

- name: Wait for progress beyond the resumed step
  spot.migration.migration_target:
    step: progress
    migration_id: "{{ migration_id }}"
    target: "{{ inventory_hostname }}"
    placed: "{{ placed.placed }}"
'''

RETURN = r'''
migration:
  description: What this step did, as the watcher reads it.
  returned: always
  type: dict
  contains:
    id: {description: The migration id., type: str}
    step: {description: "C(started) or C(running).", type: str}
    target: {description: This node., type: str}
    workloads: {description: "Per workload name, what happened to it.", type: dict}
candidate:
  description: This node as the placement ranks it.
  returned: step=describe
  type: dict
  contains:
    host: {description: This node., type: str}
    free_gpus: {description: Indices of the GPUs no process uses., type: list, elements: int}
    gpus: {description: "Every GPU, as M(spot.migration.gpu_info) describes it.", type: list, elements: dict}
    lifecycle: {description: "C(on-demand), C(standby) or C(spot).", type: str}
    evicting: {description: Whether this node has an evicting notice of its own., type: bool}
    blind: {description: Whether its GPUs or its metadata service could not be read (then never a target)., type: bool}
    error: {description: Why it is blind (null when it is not)., type: str}
    images:
      description: The container images it holds (C(repository:tag)); null when it has no container CLI.
      type: list
      elements: str
notice:
  description: This node's own notice, as M(spot.migration.eviction_info) returns it (null when not asked).
  returned: step=describe
  type: dict
placed:
  description:
    - Per workload, the checkpoint in place, its step, when it was verified and started, and C(resumed_from_kind)
      (C(rsync), C(relay), C(shared), C(replica) or C(store)).
  returned: step=place
  type: dict
progress:
  description: Per workload, the first new step and when it was written.
  returned: step=progress
  type: dict
errors:
  description: Workloads that made no progress in time.
  returned: step=progress
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception, module_node
from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError
from ansible_collections.spot.migration.plugins.module_utils._steps import TARGET_SPEC, target_step


def main():
    module = AnsibleModule(supports_check_mode=True, **TARGET_SPEC)
    with fail_on_exception(module, (MigrationError,)):
        result = target_step(module.params, module_node(module))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
