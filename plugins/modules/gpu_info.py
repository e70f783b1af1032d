#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: gpu_info
short_description: List a node's NVIDIA GPUs and which of them are free
version_added: 1.0.0
description:
  - Reads every GPU's memory, utilization, temperature, MIG mode and compute processes, and says which GPUs are
    free for a new job by the thresholds given.
  - Two backends behind one interface. V(nvml) calls C(libnvidia-ml.so.1) through ctypes (nothing to install on
    the node). V(nvidia-smi) runs C(nvidia-smi --query-gpu=... --format=csv,noheader,nounits) and
    C(--query-compute-apps=...), the documented scripted interface; the human table and XML are never parsed.
  - Values a GPU does not report (C([N/A]), C([Not Supported])) become null, never a failure.
  - A GPU with MIG enabled is never counted as free (it is partitioned, not a whole GPU).
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
  backend:
    description:
      - V(auto) uses NVML when the library loads, else C(nvidia-smi).
    type: str
    choices: [auto, nvml, nvidia-smi]
    default: auto
  min_free_memory_mb:
    description: A free GPU has at least this much free memory (MiB).
    type: int
    default: 0
  max_utilization:
    description: A free GPU is at most this busy (percent). Unknown utilization does not disqualify a GPU.
    type: int
    default: 10
  require_no_processes:
    description: A free GPU runs no compute process.
    type: bool
    default: true
  nvidia_smi_path:
    description: Path to C(nvidia-smi); default is the one on E(PATH).
    type: path
'''

EXAMPLES = r'''
- name: Which GPUs are free?
  spot.migration.gpu_info:
  register: gpus

- name: GPUs with 40 GiB free and nobody on them, read with nvidia-smi
  spot.migration.gpu_info:
    backend: nvidia-smi
    min_free_memory_mb: 40960
    max_utilization: 5
'''

RETURN = r'''
gpus:
  description: Every GPU, in index order.
  returned: success
  type: list
  elements: dict
  contains:
    index: {description: GPU index., type: int}
    uuid: {description: GPU UUID., type: str}
    name: {description: Model name., type: str}
    memory_total_mb: {description: Total memory in MiB (null when not reported)., type: int}
    memory_used_mb: {description: Used memory in MiB., type: int}
    memory_free_mb: {description: Free memory in MiB., type: int}
    utilization_gpu: {description: GPU utilization in percent., type: int}
    temperature_c: {description: Temperature in degrees Celsius., type: int}
    mig_mode: {description: "C(Enabled), C(Disabled) or null.", type: str}
    processes: {description: "Compute processes: C(pid), C(name), C(used_memory_mb).", type: list, elements: dict}
  sample:
    - index: 0
      uuid: GPU-5d3c1f1a-8f0e-4c4e-9c59-0b6d1ad7c3a1
      name: NVIDIA H100 80GB HBM3
      memory_total_mb: 81559
      memory_used_mb: 0
      memory_free_mb: 81004
      utilization_gpu: 0
      temperature_c: 31
      mig_mode: Disabled
      processes: []
gpu_count:
  description: Number of GPUs.
  returned: success
  type: int
free_gpus:
  description: Indices of the GPUs that meet O(min_free_memory_mb), O(max_utilization) and O(require_no_processes).
  returned: success
  type: list
  elements: int
free_gpu_count:
  description: Number of free GPUs.
  returned: success
  type: int
driver_version:
  description: NVIDIA driver version.
  returned: success
  type: str
backend:
  description: The backend that answered, V(nvml) or V(nvidia-smi).
  returned: success
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import command_runner, fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._gpu import create_backend, gpu_facts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type='str', default='auto', choices=['auto', 'nvml', 'nvidia-smi']),
            min_free_memory_mb=dict(type='int', default=0),
            max_utilization=dict(type='int', default=10),
            require_no_processes=dict(type='bool', default=True),
            nvidia_smi_path=dict(type='path'),
        ),
        supports_check_mode=True,
    )
    with fail_on_exception(module):
        backend = create_backend(module.params['backend'], command_runner(module), module.params['nvidia_smi_path'],
                                 which=module.get_bin_path)
        facts = gpu_facts(backend, module.params['min_free_memory_mb'], module.params['max_utilization'],
                          module.params['require_no_processes'])
    module.exit_json(changed=False, **facts)


if __name__ == '__main__':
    main()
