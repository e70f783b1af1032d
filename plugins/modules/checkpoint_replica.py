#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: checkpoint_replica
short_description: Publish a replicated checkpoint only once it is verified, keep the last few, or list them
version_added: 1.0.0
description:
  - Runs on the node that holds a workload's replicas (its pre-reserved target). A replica root holds published
    replicas C(step-<N>/) (each exactly one checkpoint with its manifest), C(latest.json) naming the newest, and
    C(.incoming-<N>-<id>/) directories that are being copied and are never read.
  - V(publish) verifies the copy in O(incoming) against the manifest that came with it (sha256 of every file)
    and renames it to C(step-<step>) (one rename on one file system, so a replica is never visible before it is
    complete), rewrites C(latest.json) atomically and removes all but the newest O(keep) replicas and incoming
    directories older than an hour. A copy that fails verification is removed and the previous replicas stay as
    they were. Publishing a step that is already published changes nothing.
  - V(info) lists the published replicas (oldest first) and the newest; it changes nothing.
  - V(restore) starts a job from its replica in object storage (the C(spot.migration.deploy) playbook's
    C(restore_from)) - it runs on the node the job will start on. The step the store's C(latest.json) names for
    O(workload) (see the watcher's C(replication.store)) is downloaded with C(rclone) into a staging directory beside
    O(checkpoint_dir), every file is verified against its manifest, and only then renamed into O(checkpoint_dir). A
    torn or tampered object is refused and nothing is renamed; a copy already in place is verified and left as it
    is. The remote must be configured on the node (its rclone configuration or instance credentials).
  - V(hold) runs on the workload's own node. It finds the newest complete checkpoint under O(checkpoint_dir) and,
    when it is newer than O(after_step), hard-links it into O(hold_dir) (same file system, no bytes copied), checks
    the held copy again and seals it there with a manifest, so the job may delete its own copy (keep-last-N) while it
    is being replicated and the job's directory is never written to. A checkpoint deleted between finding and
    linking it makes it try the next newest.
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
  root:
    description:
      - The workload's replica root, for example C(<checkpoint root>/.spot-replicas/<workload>).
      - Required unless O(action=hold).
    type: path
  checkpoint_dir:
    description: With O(action=hold) or O(action=restore), the job's checkpoint directory.
    type: path
  store:
    description: With O(action=restore), the rclone remote the replicas are in, C(name:bucket/prefix).
    type: str
  workload:
    description: With O(action=restore), the workload whose newest stored replica is restored.
    type: str
  store_transfers:
    description: With O(action=restore), parallel streams of the download.
    type: int
    default: 4
  store_rclone:
    description: With O(action=restore), the rclone program on the node (a name on the PATH or an absolute path).
    type: str
    default: rclone
  hold_dir:
    description: With O(action=hold), where the hard-linked hold goes (emptied first); on the same file system.
    type: path
  after_step:
    description: With O(action=hold), hold nothing unless the newest checkpoint's step is greater.
    type: int
    default: -1
  action:
    description:
      - V(publish) verifies and publishes O(incoming); V(info) lists; V(hold) holds the newest checkpoint; V(restore)
        puts the newest replica in object storage in place.
    type: str
    choices: [publish, info, hold, restore]
    default: info
  incoming:
    description: Name (in O(root)) of the directory the copy was made into, C(.incoming-<step>-<id>).
    type: str
  step:
    description: Training step of the copied checkpoint (must agree with its manifest where that records one).
    type: int
  keep:
    description: Published replicas kept (the newest ones).
    type: int
    default: 2
'''

EXAMPLES = r'''
- name: Publish the copy once verified
  spot.migration.checkpoint_replica:
    root: /data/checkpoints/.spot-replicas/llm-finetune
    action: publish
    incoming: .incoming-1200-3f2a
    step: 1200
    keep: 2

- name: Start from the bucket - put the newest stored replica in place first
  spot.migration.checkpoint_replica:
    action: restore
    store: "s3store:training-replicas/spot"
    workload: llm-finetune
    checkpoint_dir: /data/checkpoints/llm-finetune
  register: restored

- name: Which replicas are there
  spot.migration.checkpoint_replica:
    root: /data/checkpoints/.spot-replicas/llm-finetune
  register: replicas
'''

RETURN = r'''
held:
  description: With V(hold), the held copy (null when the newest checkpoint is not newer than O(after_step)).
  returned: action=hold
  type: str
manifest:
  description: With V(hold), the manifest of the held copy.
  returned: action=hold
  type: str
step:
  description: With V(hold), the step of the newest complete checkpoint.
  returned: action=hold
  type: int
mtime:
  description: With V(hold), its modification time (epoch seconds).
  returned: action=hold
  type: float
checkpoint:
  description: With V(hold), the job's own copy that was held.
  returned: action=hold
  type: str
bytes:
  description: With V(hold), bytes held.
  returned: action=hold
  type: int
files:
  description: With V(hold), the paths to send (the held checkpoint, and its manifest when it is a single file).
  returned: action=hold
  type: list
  elements: str
is_dir:
  description: With V(hold), whether the held checkpoint is a directory.
  returned: action=hold
  type: bool
replica:
  description: With V(publish), the replica (C(step), C(name), C(checkpoint), C(bytes), C(published_at)).
  returned: action=publish
  type: dict
  contains:
    step: {description: The checkpoint's training step., type: int}
    name: {description: "The replica's directory name (C(step-<step>)).", type: str}
removed:
  description: Replica and stale incoming directories removed by pruning.
  returned: action=publish
  type: list
  elements: str
replicas:
  description: With V(info), every published replica, oldest first.
  returned: action=info
  type: list
  elements: dict
  contains:
    step: {description: The checkpoint's training step., type: int}
    name: {description: "The replica's directory name (C(step-<step>)).", type: str}
    checkpoint: {description: Path of the replicated checkpoint on this node., type: str}
    bytes: {description: Its size., type: int}
    published_at: {description: "When it was published, ISO 8601 UTC.", type: str}
    published_epoch: {description: The same in epoch seconds., type: float}
latest:
  description: With V(info), the newest published replica, or null.
  returned: action=info
  type: dict
  contains:
    step: {description: The checkpoint's training step., type: int}
    name: {description: "The replica's directory name (C(step-<step>)).", type: str}
    checkpoint: {description: Path of the replicated checkpoint on this node., type: str}
    bytes: {description: Its size., type: int}
    published_at: {description: "When it was published, ISO 8601 UTC.", type: str}
    published_epoch: {description: The same in epoch seconds., type: float}
restored:
  description: With V(restore), the checkpoint put in place (or found in place already).
  returned: action=restore
  type: dict
  contains:
    checkpoint: {description: Its path in O(checkpoint_dir)., type: str}
    step: {description: Its training step., type: int}
    bytes: {description: Bytes verified., type: int}
    store: {description: The remote it came from., type: str}
incoming:
  description:
    - With V(info), the incoming directories (copies in progress or interrupted), a list.
    - With V(hold), a fresh C(.incoming-<step>-<id>) name for the copy on the replica node, a string.
  returned: action=info or action=hold
  type: raw
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.spot.migration.plugins.module_utils._checkpoint import CheckpointError
from ansible_collections.spot.migration.plugins.module_utils._common import command_runner, fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError, restore_from_store
from ansible_collections.spot.migration.plugins.module_utils._objstore import StoreError
from ansible_collections.spot.migration.plugins.module_utils._replica import ReplicaError, hold, info, publish


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type='path'),
            action=dict(type='str', default='info', choices=['publish', 'info', 'hold', 'restore']),
            store=dict(type='str'),
            workload=dict(type='str'),
            store_transfers=dict(type='int', default=4),
            store_rclone=dict(type='str', default='rclone'),
            checkpoint_dir=dict(type='path'),
            hold_dir=dict(type='path'),
            after_step=dict(type='int', default=-1),
            incoming=dict(type='str'),
            step=dict(type='int'),
            keep=dict(type='int', default=2),
        ),
        required_if=[('action', 'publish', ('root', 'incoming', 'step')), ('action', 'info', ('root',)),
                     ('action', 'hold', ('checkpoint_dir', 'hold_dir')),
                     ('action', 'restore', ('store', 'workload', 'checkpoint_dir'))],
        supports_check_mode=True,
    )
    p = module.params
    with fail_on_exception(module, (ReplicaError, MigrationError, StoreError, CheckpointError)):
        if p['action'] == 'restore':
            result = restore_from_store(command_runner(module), p['store'], p['workload'], p['checkpoint_dir'],
                                        module.check_mode, transfers=p['store_transfers'], rclone=p['store_rclone'])
            module.exit_json(**result)
        if p['action'] == 'hold':
            if module.check_mode:
                module.exit_json(changed=False, held=None, skipped_reason='check mode holds nothing')
            result = hold(p['checkpoint_dir'], p['hold_dir'], p['after_step'])
            module.exit_json(changed=result['held'] is not None, **result)
        if p['action'] == 'info':
            module.exit_json(changed=False, **info(p['root']))
        result = publish(p['root'], p['incoming'], p['step'], keep=p['keep'], check_mode=module.check_mode)
    result.pop('verified', None)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
