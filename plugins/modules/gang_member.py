#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: gang_member
short_description: One member of a multi-node job (a gang) in the coarse steps of a gang migration
version_added: 1.3.0
description:
  - A gang is one job whose ranks run on several nodes, one member (a M(spot.migration.workload) named
    C(<gang>.<rank>), with O(spot.migration.workload#module:gang)) per node. The C(spot.migration.migrate_gang)
    playbook runs these steps on every member at once.
  - V(describe) returns this node's member and the gang as it stands (members by rank, master, generation). It changes
    nothing.
  - V(checkpoint) asks the member for a checkpoint (its signal or command; the job saves together, every rank at the
    same step, each member its own part) and waits up to O(deadline) seconds for a complete one newer than the
    request; it returns every step this member holds complete (C(member.steps)), from which the controller takes the
    newest step every member holds. Nothing is stopped.
  - V(release) stops the member at once (SIGKILL - its part of the gang checkpoint is complete, and a rank whose peers
    are gone may hang in a collective), seals its part of O(checkpoint_step) (a sha256 manifest) and, with O(target)
    (an evicted member's replacement), pushes it with rsync into the target's staging directory, sealing while it
    sends. A member that holds no complete checkpoint of that step fails, naming the steps it holds.
  - V(replica) lists the steps of the published replicas under each of O(replicas) on this node (the replica node of
    a member lost without a notice, which takes its place). It changes nothing.
  - Every result has C(migration), the data the watcher follows (C(id), C(step), C(source), C(gang), C(workloads)).
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
    choices: [describe, checkpoint, release, replica]
  gang:
    description: The gang's name.
    type: str
    required: true
  migration_id:
    description: The migration's id (the staging directory's name). Required for V(checkpoint) and V(release).
    type: str
  host:
    description: This node's inventory name, for messages and the result.
    type: str
    required: true
  deadline:
    description: V(checkpoint) - seconds to wait for the member's checkpoint.
    type: float
    default: 30
  signalled_at:
    description:
      - V(checkpoint) - the member was already asked at this time (Unix seconds, by the eviction agent); a complete
        checkpoint newer than it is taken without asking again.
    type: float
  ask:
    description:
      - V(checkpoint) - ask the member for a new checkpoint; V(false) only lists the steps it holds (a member whose
        peer was lost cannot save with it).
    type: bool
    default: true
  replicas:
    description: V(replica) - the lost members' replicas this node holds, each C({name, root}) (the replica root).
    type: list
    elements: dict
    default: []
  seal:
    description:
      - V(release) - seal the part here; V(false) where another member seals it (a gang whose one checkpoint is on
        shared storage, C(layout=shared), is sealed once).
    type: bool
    default: true
  checkpoint_step:
    description: V(release) - the step the gang resumes from (every member holds it complete).
    type: int
  target:
    description:
      - V(release) - where an evicted member's part goes, C({name, host, ssh, root}) (see
        P(spot.migration.migration_endpoint#filter)); omitted for a member that stays.
    type: dict
  ssh_ciphers:
    description:
      - V(release) - the ciphers the copy's SSH connection asks for, most preferred first (as
        M(spot.migration.migration_source)); an empty string leaves the choice to ssh.
    type: str
    default: aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr
  bwlimit:
    description: V(release) - rsync's bandwidth limit in KiB/s (0, none).
    type: int
    default: 0
  workload_root:
    description: Where process workloads keep their state (default as M(spot.migration.workload)).
    type: path
  container_cli:
    description: Path of the container CLI, when not on PATH.
    type: path
seealso:
  - module: spot.migration.workload
  - module: spot.migration.migration_target
'''

EXAMPLES = r'''
- name: The gang as it stands
  spot.migration.gang_member:
    step: describe
    gang: ddp
    host: "{{ inventory_hostname }}"
  register: gang_now

- name: Every member saves together (run on every member at once)
  spot.migration.gang_member:
    step: checkpoint
    gang: ddp
    migration_id: gang-ddp-1
    host: "{{ inventory_hostname }}"
    deadline: 25
  register: gang_part
'''

RETURN = r'''
member:
  description:
    - V(describe) - the member here (C(name), C(running), C(runtime)).
    - V(checkpoint) - its C(name), C(rank), C(spec), C(checkpoint_dir), C(emergency_step) and C(steps) (every step it
      holds complete, newest first).
  returned: step=describe or step=checkpoint
  type: dict
gang:
  description: The gang as this member knows it (C(name), C(size), C(rank), C(members), C(master_addr), C(generation)...).
  returned: step=describe
  type: dict
sealed:
  description:
    - The member's part of the step (C(checkpoint), C(is_dir), C(bytes), C(step), C(spec)), how it was stopped, and for
      an evicted member where it was copied (C(target), C(staged), C(staging), C(transfer_seconds)).
  returned: step=release
  type: dict
replicas:
  description: V(replica) - per lost member, C(root) and C(steps) (the published replicas' steps, newest first).
  returned: step=replica
  type: dict
migration:
  description: What the watcher follows - C(id), C(step), C(source), C(gang), C(workloads).
  returned: step=checkpoint or step=release
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception, module_node
from ansible_collections.spot.migration.plugins.module_utils._gang import GangError
from ansible_collections.spot.migration.plugins.module_utils._gang_steps import GANG_SPEC, gang_step
from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError


def main():
    module = AnsibleModule(supports_check_mode=True, **GANG_SPEC)
    with fail_on_exception(module, (MigrationError, GangError)):
        result = gang_step(module.params, module_node(module))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
