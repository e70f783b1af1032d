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
  - V(published) verifies the copy in O(incoming) against the manifest that came with it (sha256 of every file)
    and renames it to C(step-<step>) (one rename on one file system: a replica is never visible before it is
    complete), rewrites C(latest.json) atomically and removes all but the newest O(keep) replicas and incoming
    directories older than an hour. A copy that fails verification is removed and the previous replicas stay as
    they were. Publishing a step that is already published changes nothing.
  - V(info) lists the published replicas (oldest first) and the newest; it changes nothing.
  - V(held) runs on the workload's own node: it finds the newest complete checkpoint under O(checkpoint_dir) and,
    when it is newer than O(after_step), hard-links it into O(hold_dir) (same file system, no bytes copied), checks
    the held copy again and seals it there with a manifest, so the job may delete its own copy (keep-last-N) while it
    is being replicated and the job's directory is never written to. A checkpoint deleted between finding and
    linking it makes it try the next newest.
author:
  - spot.migration contributors (@spot-migration)
extends_documentation_fragment:
  - spot.migration.attributes
attributes:
  diff_mode:
    support: none
options:
  root:
    description:
      - The workload's replica root, for example C(<checkpoint root>/.spot-replicas/<workload>).
      - Required unless O(state=held).
    type: path
  checkpoint_dir:
    description: With O(state=held), the job's checkpoint directory.
    type: path
  hold_dir:
    description: With O(state=held), where the hard-linked hold goes (emptied first); on the same file system.
    type: path
  after_step:
    description: With O(state=held), hold nothing unless the newest checkpoint's step is greater.
    type: int
    default: -1
  state:
    description: V(published) verifies and publishes O(incoming); V(info) lists; V(held) holds the newest checkpoint.
    type: str
    choices: [published, info, held]
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
    state: published
    incoming: .incoming-1200-3f2a
    step: 1200
    keep: 2

- name: Which replicas are there
  spot.migration.checkpoint_replica:
    root: /data/checkpoints/.spot-replicas/llm-finetune
  register: replicas
'''

RETURN = r'''
held:
  description: With V(held), the held copy (null when the newest checkpoint is not newer than O(after_step)).
  returned: state=held
  type: str
manifest:
  description: With V(held), the manifest of the held copy.
  returned: state=held
  type: str
step:
  description: With V(held), the step of the newest complete checkpoint.
  returned: state=held
  type: int
mtime:
  description: With V(held), its modification time (epoch seconds).
  returned: state=held
  type: float
checkpoint:
  description: With V(held), the job's own copy that was held.
  returned: state=held
  type: str
bytes:
  description: With V(held), bytes held.
  returned: state=held
  type: int
files:
  description: With V(held), the paths to send (the held checkpoint, and its manifest when it is a single file).
  returned: state=held
  type: list
  elements: str
is_dir:
  description: With V(held), whether the held checkpoint is a directory.
  returned: state=held
  type: bool
incoming:
  description: With V(held), a fresh C(.incoming-<step>-<id>) name for the copy on the replica node.
  returned: state=held
  type: str
replica:
  description: With V(published), the replica (C(step), C(name), C(checkpoint), C(bytes), C(published_at)).
  returned: state=published
  type: dict
removed:
  description: Replica and stale incoming directories removed by pruning.
  returned: state=published
  type: list
  elements: str
replicas:
  description: With V(info), every published replica, oldest first.
  returned: state=info
  type: list
  elements: dict
latest:
  description: With V(info), the newest published replica, or null.
  returned: state=info
  type: dict
incoming:
  description: With V(info), the incoming directories (copies in progress or interrupted).
  returned: state=info
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._replica import ReplicaError, hold, info, publish


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type='path'),
            state=dict(type='str', default='info', choices=['published', 'info', 'held']),
            checkpoint_dir=dict(type='path'),
            hold_dir=dict(type='path'),
            after_step=dict(type='int', default=-1),
            incoming=dict(type='str'),
            step=dict(type='int'),
            keep=dict(type='int', default=2),
        ),
        required_if=[('state', 'published', ('root', 'incoming', 'step')), ('state', 'info', ('root',)),
                     ('state', 'held', ('checkpoint_dir', 'hold_dir'))],
        supports_check_mode=True,
    )
    p = module.params
    with fail_on_exception(module, (ReplicaError,)):
        if p['state'] == 'held':
            if module.check_mode:
                module.exit_json(changed=False, held=None, skipped_reason='check mode holds nothing')
            result = hold(p['checkpoint_dir'], p['hold_dir'], p['after_step'])
            module.exit_json(changed=result['held'] is not None, **result)
        if p['state'] == 'info':
            module.exit_json(changed=False, **info(p['root']))
        result = publish(p['root'], p['incoming'], p['step'], keep=p['keep'], check_mode=module.check_mode)
    result.pop('verified', None)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
