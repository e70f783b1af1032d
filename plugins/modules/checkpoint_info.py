#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: checkpoint_info
short_description: Find the newest complete checkpoint in a directory
version_added: 1.0.0
description:
  - Looks at every checkpoint under O(path) (files and directories), newest first, and returns the first one that
    is complete by the rule of its format. Every newer candidate passed over is listed in RV(rejected) with the reason.
  - Nothing is ever unpickled or loaded; only structure is read.
  - "Formats and their completeness rules: V(safetensors) - the header parses and the file size equals
    8 + header length + the largest data offset. V(torch) - a C(torch.save) zip: the end-of-central-directory record
    and the central directory parse, every entry lies inside the file, C(data.pkl) is there (legacy pickle files cannot
    be verified and are rejected). V(dcp) - a C(torch.distributed.checkpoint) directory: C(.metadata), written last,
    is present and no data file is newer. V(hf) - a Trainer C(checkpoint-N/): C(trainer_state.json) parses and its
    weight files (and the shards an index names) are complete. V(deepspeed) - the C(latest) file is the commit marker:
    the tag it names is the checkpoint, other tags are in progress. V(orbax) - no C(.orbax-checkpoint-tmp-*) name, and
    C(commit_success.txt) where the other steps have one. V(generic) - a directory sealed by
    M(spot.migration.checkpoint_manifest) whose files have the sizes its manifest records."
  - Temporary names (C(.tmp), C(.partial), C(~)), zero-byte files and files still growing (see O(stable_for)) are
    never complete.
author:
  - spot.migration contributors (@spot-migration)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: This module never changes anything.
  diff_mode:
    support: N/A
    details: This module never changes anything.
  platform:
    platforms: posix
options:
  path:
    description:
      - Directory holding checkpoints (or a DeepSpeed save directory with C(latest), or one checkpoint).
    type: path
    required: true
  format:
    description: Only consider this format; V(auto) recognises each candidate by itself.
    type: str
    choices: [auto, safetensors, torch, dcp, hf, deepspeed, orbax, generic]
    default: auto
  newer_than:
    description:
      - Only checkpoints modified after this time, as epoch seconds or ISO 8601 (for example the time a checkpoint
        was asked for).
    type: str
  max_age:
    description: Only checkpoints modified at most this many seconds ago.
    type: float
  wait_timeout:
    description:
      - Wait up to this many seconds for a qualifying checkpoint to appear, checking twice a second; RV(elapsed) says
        how long it took. V(0) looks once.
    type: float
    default: 0
  stable_for:
    description:
      - A checkpoint whose files changed less than this many seconds ago is still being written and not complete.
    type: float
    default: 0
'''

EXAMPLES = r'''
- name: Newest complete checkpoint of the job
  spot.migration.checkpoint_info:
    path: /data/checkpoints/llama-ft
  register: ckpt

- name: Wait up to 60 s for the emergency checkpoint asked for a moment ago
  spot.migration.checkpoint_info:
    path: /data/checkpoints/llama-ft
    newer_than: "{{ signalled_at }}"
    wait_timeout: 60
    stable_for: 1
'''

RETURN = r'''
checkpoint:
  description: Absolute path of the newest complete checkpoint.
  returned: success
  type: str
  sample: /data/checkpoints/llama-ft/checkpoint-1200
format:
  description: Its format.
  returned: success
  type: str
  sample: hf
step:
  description: Training step, from the checkpoint's own metadata or its name; null when neither says.
  returned: success
  type: int
  sample: 1200
mtime:
  description: Modification time (epoch seconds) of its newest file.
  returned: success
  type: float
size_bytes:
  description: Total size of its files.
  returned: success
  type: int
files:
  description: Its files, relative to the checkpoint (the manifest excluded).
  returned: success
  type: list
  elements: str
rejected:
  description: Every newer candidate passed over, with C(path), C(format), C(mtime) and C(reason).
  returned: always
  type: list
  elements: dict
  sample: [{path: /data/checkpoints/llama-ft/checkpoint-1300, format: hf, reason: "no trainer_state.json"}]
  contains:
    path: {description: The candidate., type: str}
    format: {description: Its format., type: str}
    mtime: {description: Its modification time (epoch seconds)., type: float}
    reason: {description: "Why it is not complete (torn, a file missing, a manifest mismatch, ...).", type: str}
elapsed:
  description: Seconds spent looking (and waiting).
  returned: always
  type: float
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._checkpoint import parse_time, wait_for_checkpoint
from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            format=dict(type='str', default='auto',
                        choices=['auto', 'safetensors', 'torch', 'dcp', 'hf', 'deepspeed', 'orbax', 'generic']),
            newer_than=dict(type='str'),
            max_age=dict(type='float'),
            wait_timeout=dict(type='float', default=0.0),
            stable_for=dict(type='float', default=0.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    with fail_on_exception(module):
        result = wait_for_checkpoint(p['path'], wait_timeout=p['wait_timeout'], fmt=p['format'],
                                     newer_than=parse_time(p['newer_than']), max_age=p['max_age'],
                                     stable_for=p['stable_for'])
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
