#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: checkpoint_manifest
short_description: Seal a checkpoint with a sha256 manifest, or verify it against one
version_added: 1.0.0
description:
  - V(present) hashes every file of the checkpoint (streaming, in parallel for many files) and writes the manifest
    through a temporary name and an atomic rename. When an identical manifest is already there nothing changes.
  - V(verified) hashes every file again and fails listing every missing, extra or mismatching file; the checkpoint
    files themselves are never touched.
  - The diff (with C(--diff)) lists the manifest's lines (sha256, file, size) before and after.
  - A directory checkpoint carries C(<dir>/.spot-manifest.json); a single-file checkpoint C(<file>.spot-manifest.json)
    beside it.
author:
  - spot.migration contributors (@spot-migration)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  path:
    description: The checkpoint (a directory or a file).
    type: path
    required: true
  state:
    description: V(present) writes the manifest; V(verified) checks the checkpoint against it.
    type: str
    choices: [present, verified]
    default: present
  format:
    description: Format recorded in the manifest (informational).
    type: str
  step:
    description: Training step recorded in the manifest.
    type: int
'''

EXAMPLES = r'''
- name: Seal the emergency checkpoint on the source
  spot.migration.checkpoint_manifest:
    path: "{{ ckpt.checkpoint }}"
    format: "{{ ckpt.format }}"
    step: "{{ ckpt.step }}"

- name: Prove the copy on the target is bit-for-bit the same
  spot.migration.checkpoint_manifest:
    path: /data/staging/checkpoint-1200
    state: verified
'''

RETURN = r'''
manifest:
  description: Path of the manifest.
  returned: always
  type: str
file_count:
  description: Number of files covered (the manifest excluded).
  returned: success
  type: int
total_bytes:
  description: Their total size.
  returned: success
  type: int
files:
  description: With V(present), each file's C(size) and C(sha256).
  returned: state=present
  type: dict
missing:
  description: Files the manifest lists that are not there.
  returned: state=verified
  type: list
  elements: str
extra:
  description: Files that are there but not in the manifest.
  returned: state=verified
  type: list
  elements: str
mismatched:
  description: Files whose size or sha256 differ, each with C(file) and C(reason).
  returned: state=verified
  type: list
  elements: dict
  contains:
    file: {description: "The file, relative to the checkpoint.", type: str}
    reason: {description: "What differs (its size or its sha256).", type: str}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._checkpoint import seal, verify
from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            state=dict(type='str', default='present', choices=['present', 'verified']),
            format=dict(type='str'),
            step=dict(type='int'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    with fail_on_exception(module):
        if p['state'] == 'verified':
            result = verify(p['path'])
            module.exit_json(changed=False, **result)
        result = seal(p['path'], check_mode=module.check_mode, fmt=p['format'], step=p['step'])
    diff = result.pop('diff')
    if module._diff and diff:
        result['diff'] = diff
    module.exit_json(**result)


if __name__ == '__main__':
    main()
