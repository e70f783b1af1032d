#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: workload_info
short_description: List the workloads on a node with the spec needed to re-create them
version_added: 1.0.0
description:
  - Lists the workloads M(spot.migration.workload) manages on this node, with status, pid or container id, and the
    stored spec.
  - Looks at every runtime whose tooling is installed (V(process) always; V(podman) and V(docker) when found), or
    only the ones given.
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
  name:
    description: Only this workload.
    type: str
  runtimes:
    description: Runtimes to look at; default all whose command is installed.
    type: list
    elements: str
    choices: [docker, podman, process]
  workload_root:
    description: Where V(process) workloads are kept (see M(spot.migration.workload)).
    type: path
'''

EXAMPLES = r'''
- name: What runs on this node?
  spot.migration.workload_info:
  register: found

- name: Only process workloads of the local fleet node
  spot.migration.workload_info:
    runtimes: [process]
    workload_root: "{{ spot_workload_root }}"
'''

RETURN = r'''
workloads:
  description: One entry per workload.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Name., type: str}
    runtime: {description: "docker, podman or process.", type: str}
    running: {description: Whether it runs., type: bool}
    pid: {description: Process id while it runs., type: int}
    container_id: {description: Container id., type: str}
    exit_code: {description: Exit code once ended., type: int}
    spec: {description: The stored spec., type: dict}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import command_runner, fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._workload import RUNTIMES, WorkloadError, create_driver, public


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type='str'),
            runtimes=dict(type='list', elements='str', choices=list(RUNTIMES)),
            workload_root=dict(type='path'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    run = command_runner(module)
    found = []
    with fail_on_exception(module):
        for runtime in p['runtimes'] or RUNTIMES:
            if runtime != 'process' and not p['runtimes'] and not module.get_bin_path(runtime):
                continue
            driver = create_driver(runtime, run, module.get_bin_path, p['workload_root'])
            try:
                names = driver.names()
            except WorkloadError as exc:
                if p['runtimes']:
                    raise
                # Found by looking around (a docker client without a daemon, say): say so, look on.
                module.warn('%s not listed: %s' % (runtime, exc))
                continue
            for name in names:
                if p['name'] in (None, name):
                    state = driver.status(name)
                    if state:
                        found.append(public(state, keep_spec=True))
    module.exit_json(changed=False, workloads=found)


if __name__ == '__main__':
    main()
