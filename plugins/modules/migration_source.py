#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: migration_source
short_description: The source side of a migration, in coarse steps (checkpoint, release, transfer, cleanup, restart)
version_added: 1.1.0
description:
  - One call per step of a migration on the node being taken away, so that a migration is a handful of SSH round
    trips. The M(spot.migration.migrate) playbook is the sequencer; the logic lives in the collection's module_utils.
  - V(checkpoint) lists the workloads to move and asks every running one for an emergency checkpoint at the same time,
    within O(deadline) minus O(safety_margin) seconds. Nothing is stopped, so a migration that finds no target leaves
    the job running. With O(wait=false) it returns as soon as they are asked (C(migration.step=checkpointing)) and
    V(release) waits for each checkpoint, until the same deadline, so the targets are chosen and reserved while the
    checkpoints are being written.
  - V(release) stops each workload in O(assignments), takes its newest complete checkpoint (the emergency one when it
    came in time), seals it with a sha256 manifest and, for O(transfer=rsync), pushes it into the target's staging
    directory (C(<root>/.spot-staging/<migration_id>)). A workload whose checkpoint cannot be sealed is started again
    here. A failed push is reported in C(failed_transfers), not raised, so the others go on.
  - V(transfer) moves already sealed checkpoints (O(sealed)) - a push to a next target after the first failed, or the
    relay through the controller (O(transfer=relay), run with C(delegate_to=localhost)).
  - V(cleanup) removes the moved workloads from the source once they run on their targets.
  - V(restart) starts stopped workloads again here, from their sealed checkpoints, when nothing could be placed.
  - Every result has C(migration), the data the watcher follows (C(id), C(step), C(source), C(workloads)).
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
    choices: [checkpoint, release, transfer, cleanup, restart]
  migration_id:
    description:
      - The migration's id; it becomes the staging directory's name, so only letters, digits and C(._:+-) are
        allowed (never C(..) or C(/)).
    type: str
    required: true
  source:
    description: The source's inventory name, for messages and the result.
    type: str
    required: true
  workloads:
    description: Names of the workloads to move; empty means every workload running here.
    type: list
    elements: str
    default: []
  include_stopped:
    description: Also move the named O(workloads) that are stopped here (a migration resumed after its runner died).
    type: bool
    default: false
  deadline:
    description: Seconds left before the node goes away; default from the metadata service's notice, else O(default_deadline).
    type: float
  default_deadline:
    description: Deadline when neither O(deadline) nor the notice gives one.
    type: float
    default: 30
  safety_margin:
    description: Seconds kept back from the deadline when waiting for the emergency checkpoint.
    type: float
    default: 5
  signalled_at:
    description: Unix time at which the workloads were already asked to checkpoint (by the eviction agent).
    type: float
  wait:
    description:
      - V(checkpoint) - wait for the emergency checkpoints here (V(true)), or only ask for them and let V(release) wait
        (V(false); pass the C(migration.workloads) of this result to it as O(emergency)). The deadline is the same.
    type: bool
    default: true
  provider:
    description: The metadata service's dialect, read for the deadline when O(deadline) is not given.
    type: str
    choices: [auto, aws, gcp, azure]
    default: auto
  metadata_url:
    description: Base URL of the metadata service (tests, simulators, unusual clouds).
    type: str
  moving:
    description: The C(moving) list the V(checkpoint) step returned (the workloads with their specs).
    type: list
    elements: dict
    default: []
  assignments:
    description:
      - Workload name to its target, C({name, host, ssh, root, replica_root}), C(ssh) an argv list without the host
        (see P(spot.migration.migration_endpoint#filter)).
    type: dict
    default: {}
  transfer:
    description: V(rsync) pushes node to node; V(relay) goes through the controller; V(shared) moves nothing.
    type: str
    choices: [rsync, relay, shared]
    default: rsync
  ssh_ciphers:
    description:
      - The ciphers the transfer's SSH connections ask for, in order of preference (C(ssh -c)). The default is
        OpenSSH's own list with AES-GCM first, which moves a checkpoint about a third faster than the default
        chacha20-poly1305 on CPUs with AES-NI; a server that accepts OpenSSH's defaults accepts one of them.
      - An empty string leaves the choice to ssh and its configuration (for example where a policy fixes the ciphers).
    type: str
    default: aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr
  progress_file:
    description:
      - V(release) with V(transfer=rsync) - write the running transfer's progress (workload, bytes, percent, rate) to
        this file on the source while rsync runs, and remove it at the end.
      - The module's action plugin sets it by itself and shows the progress in the play output once a transfer has
        run longer than C(spot_transfer_progress_after) seconds (default 5), every C(spot_transfer_progress_every)
        seconds (default 5); a short transfer costs nothing more.
    type: path
  sealed:
    description: The C(sealed) list of an earlier V(release) (V(transfer), V(restart)).
    type: list
    elements: dict
    default: []
  source_endpoint:
    description: The source as an SSH endpoint for the relay, C({name, host, ssh}).
    type: dict
  stop_timeout:
    description: Seconds a workload has to exit after SIGTERM (or its container's stop) before it is killed.
    type: float
    default: 30
  stop:
    description:
      - How V(release) stops a workload. V(auto) kills it at once (SIGKILL) when O(emergency) says its emergency
        checkpoint of this run is complete, since that checkpoint is what moves and a graceful stop would spend the
        window on a second one; otherwise it gets SIGTERM and O(stop_timeout). V(graceful) always stops gracefully.
    type: str
    choices: [auto, graceful]
    default: auto
  emergency:
    description:
      - The V(checkpoint) step's C(migration.workloads) (per workload C(emergency_ok), C(emergency_checkpoint)), for
        V(release). Rows of a V(checkpoint) with O(wait=false) also say when each workload was asked and until when
        its checkpoint counts; V(release) waits for it until then, and its C(sealed) rows say how it went.
    type: dict
    default: {}
  choices:
    description:
      - For V(release), the plan made against the notice's deadline, per workload, C({from, fallback}) (the watcher
        makes it from what it has measured; without it every workload moves its emergency checkpoint).
      - C(from=emergency) waits for the emergency checkpoint and moves it; C(from=newest) moves the newest complete
        checkpoint on disk at once (the job is killed, not asked to checkpoint again); C(from=replica) only stops the
        job, which its target resumes from the verified replica it holds (the target must be the workload's replica
        node; otherwise C(newest), said in the row's C(choice_note)).
      - C(fallback=replica) gives a copy up as soon as its running total says it cannot end before the window closes
        (the deadline less the safety margin, as the V(checkpoint) step set it), removes what reached the target and
        resumes from the replica there instead (the row's C(fell_back) says why).
    type: dict
    default: {}
  bwlimit:
    description: Bandwidth limit of the transfer in KiB/s (rsync's C(--bwlimit)); 0 for none.
    type: int
    default: 0
  workload_root:
    description: Where process workloads keep their state (default as M(spot.migration.workload)).
    type: path
  container_cli:
    description: Path of the container CLI, when not on PATH.
    type: path
'''

EXAMPLES = r'''
- name: Emergency checkpoint of everything running here
  spot.migration.migration_source:
    step: checkpoint
    migration_id: "{{ migration_id }}"
    source: "{{ inventory_hostname }}"
    deadline: 25
  register: checkpointed

- name: Stop, seal and push to the reserved targets
  spot.migration.migration_source:
    step: release
    migration_id: "{{ migration_id }}"
    source: "{{ inventory_hostname }}"
    moving: "{{ checkpointed.moving }}"
    assignments: "{{ assignments }}"
'''

RETURN = r'''
migration:
  description: What this step did, as the watcher reads it.
  returned: always
  type: dict
  contains:
    id: {description: The migration id., type: str}
    step: {description: "C(checkpointed), C(transferred), C(transfer_failed), C(cleaned) or C(restarted_on_source).", type: str}
    source: {description: The source., type: str}
    workloads: {description: "Per workload name, what happened to it.", type: dict}
moving:
  description: The workloads chosen to move, with their stored specs (V(checkpoint)).
  returned: step=checkpoint
  type: list
  elements: dict
  contains:
    name: {description: The workload., type: str}
    runtime: {description: "C(process), C(podman) or C(docker).", type: str}
    spec: {description: "Its stored spec (as M(spot.migration.workload) returns it).", type: dict}
deadline:
  description: The deadline used, in seconds.
  returned: step=checkpoint
  type: float
sealed:
  description:
    - Per workload, the sealed checkpoint (C(checkpoint), C(step), C(bytes), C(format), C(is_dir), C(stopped_by),
      C(verified_at)) and its transfer (C(target), C(staged), C(transferred_at), C(transfer_error)).
  returned: step=release or step=transfer
  type: list
  elements: dict
  contains:
    name: {description: The workload., type: str}
    checkpoint: {description: The sealed checkpoint on the source., type: str}
    step: {description: Its training step., type: int}
    bytes: {description: Its size., type: int}
    format: {description: Its format., type: str}
    is_dir: {description: Whether it is a directory., type: bool}
    stopped_by: {description: "C(SIGTERM), C(SIGKILL) or null (it was not running).", type: str}
    verified_at: {description: "When it was sealed, ISO 8601 UTC.", type: str}
    target: {description: Where it goes., type: str}
    staged: {description: Its copy in the target's staging directory (null when the transfer failed)., type: str}
    transferred_at: {description: "When the transfer finished, ISO 8601 UTC.", type: str}
    transfer_error: {description: Why the transfer failed (null when it did not)., type: str}
    error: {description: Why nothing could be sealed (the workload was started again here)., type: str}
    transfer:
      description: "C(replica) when the target resumes it from its replica (chosen, or fallen back to); absent otherwise."
      type: str
    resume_choice: {description: "The plan's O(choices) C(from) for it, as applied.", type: str}
    choice_note: {description: Why the choice applied differs from the one asked (no replica on the target)., type: str}
    fell_back: {description: Why its copy was given up for the replica on the target (too slow for the window)., type: str}
failed_transfers:
  description: Workloads whose checkpoint could not be moved to their target.
  returned: step=release or step=transfer
  type: list
  elements: str
errors:
  description: Workloads that could not be sealed (started again here when possible).
  returned: step=release
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception, module_node
from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError
from ansible_collections.spot.migration.plugins.module_utils._steps import SOURCE_SPEC, source_step
from ansible_collections.spot.migration.plugins.module_utils._transfer import TransferError


def main():
    module = AnsibleModule(supports_check_mode=True, **SOURCE_SPEC)
    with fail_on_exception(module, (MigrationError, TransferError)):
        result = source_step(module.params, module_node(module))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
