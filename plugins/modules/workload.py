#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: workload
short_description: Start, checkpoint, stop or remove one training workload on a node
version_added: 1.0.0
description:
  - Manages one workload, run by a container CLI (V(docker), V(podman)) or as a plain V(process) under a small
    supervisor that records its pid (with the kernel's start time, so a reused pid is never taken for it) and exit
    status.
  - The spec (image, command, arguments, environment, GPUs, volumes, checkpoint settings) is stored with the workload
    (a container label, or C(spec.json) in O(workload_root)/NAME) so M(spot.migration.workload_info) can report it
    and it can be re-created on another node.
  - Never a second copy. V(started) leaves a running workload with the same spec unchanged; a different spec is an
    error unless O(recreate=true).
  - V(checkpointed) sends the checkpoint signal (or runs O(checkpoint_command) inside the workload) and waits, up to
    O(deadline) seconds, for M(spot.migration.checkpoint_info) rules to see a complete checkpoint in O(checkpoint_dir)
    newer than the signal, and returns it. If none comes, it fails saying so and naming the newest complete
    checkpoint already on disk; the workload keeps running.
  - V(stopped) sends SIGTERM and, after O(stop_timeout), SIGKILL, and reports which ended it.
  - V(fenced) stops and removes this node's copy and leaves a marker (C(O(workload_root)/.fenced/NAME)) saying it was
    resumed elsewhere while this node was lost (the watcher does this when the node comes back). V(started) refuses a
    fenced workload unless O(clear_fence=true), which only a migration moving it back here sets.
  - Names must be plain (letters, digits, C(.), C(_), C(-)); arguments, paths and environment values are passed as
    argv data, never through a shell.
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
  name:
    description: Workload name (container name, directory name under O(workload_root)).
    type: str
    required: true
  state:
    description: What to make true.
    type: str
    choices: [started, checkpointed, stopped, absent, fenced]
    default: started
  fence_id:
    description: With V(fenced), who fenced it (the watcher's migration id), kept in the marker.
    type: str
  clear_fence:
    description: With V(started), start it even though this node's copy was fenced (removing the marker).
    type: bool
    default: false
  runtime:
    description: What runs the workload.
    type: str
    choices: [docker, podman, process]
    default: process
  image:
    description: Container image (container runtimes only).
    type: str
  command:
    description:
      - Argv list. For V(process) the program and its first arguments; for containers it replaces the image's
        entrypoint.
    type: list
    elements: str
  args:
    description: More arguments, after O(command) (for containers, after the image).
    type: list
    elements: str
  resume_from:
    description: Checkpoint to resume from; substituted into O(resume_arg).
    type: path
  resume_arg:
    description: Arguments appended when O(resume_from) is set; C({checkpoint}) is replaced by its path.
    type: list
    elements: str
    default: ['--resume', '{checkpoint}']
  gpus:
    description:
      - GPUs for the workload, a count (that many free GPUs are chosen now) or a list of indices.
      - Processes get E(CUDA_VISIBLE_DEVICES); podman gets CDI devices C(nvidia.com/gpu=N), docker C(--gpus device=N).
        On simulated GPUs (E(SPOT_SIM_GPU_STATE) set, as on the local fleet) containers get the environment instead.
    type: raw
  env:
    description: Environment variables.
    type: dict
  volumes:
    description: Container volumes, C(/host:/container[:options]). O(checkpoint_dir) is mounted at the same path.
    type: list
    elements: str
  checkpoint_dir:
    description: Where the workload writes its checkpoints (a host path).
    type: path
  checkpoint_signal:
    description: Signal that asks the workload for a checkpoint.
    type: str
    default: SIGUSR1
  checkpoint_command:
    description: Argv run inside the workload instead of sending O(checkpoint_signal).
    type: list
    elements: str
  workdir:
    description: Working directory of the workload.
    type: path
  gang:
    description:
      - This workload is one member of a job that spans several nodes (a gang), whose rendezvous it gets in its
        environment - C(MASTER_ADDR), C(MASTER_PORT), C(NNODES), C(NODE_RANK), C(NPROC_PER_NODE), the same as
        C(PET_*) for C(torchrun), C(SPOT_GANG), C(SPOT_GANG_GENERATION), and with one process per member C(RANK),
        C(WORLD_SIZE), C(LOCAL_RANK), C(LOCAL_WORLD_SIZE). These win over the same names in O(env).
      - The workload must be named C(<gang name>.<rank>). The deploy playbook (C(workload.gang)) writes this for
        each member; the C(spot.migration.migrate_gang) playbook moves a member and restarts the gang.
    type: dict
    suboptions:
      name: {description: The gang's name., type: str, required: true}
      size: {description: How many members (nodes)., type: int, required: true}
      rank: {description: This member's rank (C(NODE_RANK))., type: int, required: true}
      nproc_per_node: {description: Processes per member., type: int, default: 1}
      master_addr: {description: "Member 0's address, where the rendezvous is.", type: str, required: true}
      master_port: {description: The rendezvous port., type: int, default: 29500}
      generation: {description: How many times the gang was restarted (a new rendezvous each time)., type: int, default: 0}
      members: {description: The members' hosts by rank., type: list, elements: str, default: []}
      layout:
        description:
          - Where the gang's checkpoint is - V(member) (each member's part in its own O(checkpoint_dir), on its own
            disk) or V(shared) (one directory every member mounts at the same path; nothing is copied when a member
            moves).
        type: str
        choices: [member, shared]
        default: member
  deadline:
    description: V(checkpointed) waits this many seconds for the checkpoint.
    type: float
    default: 60
  stable_for:
    description: A checkpoint whose files changed less than this many seconds ago is not complete yet.
    type: float
    default: 0
  signalled_at:
    description:
      - V(checkpointed) only. The workload was already asked to checkpoint at this time (Unix seconds), for example
        by the eviction agent the moment the notice appeared. A complete checkpoint newer than it is taken as it is
        (C(changed=false), C(checkpoint.signal=earlier)) instead of asking the workload a second time.
    type: float
  stop_timeout:
    description: Seconds between SIGTERM and SIGKILL.
    type: float
    default: 30
  recreate:
    description: Replace a running workload whose spec differs (stopped gracefully first).
    type: bool
    default: false
  workload_root:
    description:
      - Where V(process) workloads keep their spec, pid file and log.
      - Defaults to C(/var/lib/spot-migration/workloads) for root, C(~/.local/share/spot-migration/workloads) otherwise.
    type: path
  container_cli:
    description: Path of the docker or podman command (default, the one on E(PATH)).
    type: path
'''

EXAMPLES = r'''
- name: Run the trainer as a process on two free GPUs
  spot.migration.workload:
    name: llama-ft
    runtime: process
    command: [python3, /opt/train/train.py]
    args: [--checkpoint-dir, /data/ckpt/llama-ft]
    checkpoint_dir: /data/ckpt/llama-ft
    gpus: 2

- name: Emergency checkpoint within 25 s
  spot.migration.workload:
    name: llama-ft
    state: checkpointed
    deadline: 25
  register: emergency

- name: Resume in a container from a verified checkpoint
  spot.migration.workload:
    name: llama-ft
    runtime: podman
    image: registry.example.com/train:1.4
    args: [--checkpoint-dir, /data/ckpt/llama-ft]
    checkpoint_dir: /data/ckpt/llama-ft
    resume_from: /data/ckpt/llama-ft/step-00001200.safetensors
'''

RETURN = r'''
workload:
  description: The workload after the task (null once absent).
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str}
    runtime: {description: Runtime., type: str}
    running: {description: Whether it runs., type: bool}
    pid: {description: Process id (container's main process for containers)., type: int}
    container_id: {description: Container id (containers)., type: str}
    exit_code: {description: Exit code once it has ended., type: int}
spec:
  description: The stored spec (V(started)).
  returned: state=started
  type: dict
  contains:
    name: {description: The workload's name., type: str}
    runtime: {description: "C(process), C(podman) or C(docker).", type: str}
    image: {description: The container image (containers)., type: str}
    command: {description: The command (argv)., type: list, elements: str}
    args: {description: Arguments after the command or the image's entry point., type: list, elements: str}
    env: {description: Environment variables., type: dict}
    volumes: {description: Container volumes., type: list, elements: str}
    checkpoint_dir: {description: Where it writes its checkpoints., type: str}
    checkpoint_signal: {description: The signal that asks it for a checkpoint., type: str}
    checkpoint_command: {description: The command that asks it for a checkpoint instead of a signal., type: list, elements: str}
    resume_from: {description: The checkpoint it was started from., type: str}
    resume_arg: {description: The option that passes that checkpoint., type: str}
    workdir: {description: Its working directory., type: str}
    gpus: {description: The GPU indices it was given., type: list, elements: int}
checkpoint:
  description: With V(checkpointed), the checkpoint written after the signal (as M(spot.migration.checkpoint_info)
    returns it) plus C(signalled_at) and C(signal).
  returned: state=checkpointed and not check mode
  type: dict
  contains:
    checkpoint: {description: Path of the checkpoint written after the signal., type: str}
    format: {description: Its format., type: str}
    step: {description: Its training step., type: int}
    mtime: {description: Modification time of its newest file (epoch seconds)., type: float}
    size_bytes: {description: Total size of its files., type: int}
    signalled_at: {description: "When the checkpoint was asked for, ISO 8601 UTC.", type: str}
    signal: {description: The signal sent (or C(command))., type: str}
stopped_by:
  description: C(SIGTERM) or C(SIGKILL), whichever ended the workload; null when it was not running.
  returned: state=stopped or state=absent
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import command_runner, fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._gpu import create_backend, gpu_facts
from ansible_collections.spot.migration.plugins.module_utils._workload import (
    build_spec, check_fence, create_driver, ensure_absent, ensure_checkpointed, ensure_fenced, ensure_started, ensure_stopped,
    pick_gpus)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', default='started', choices=['started', 'checkpointed', 'stopped', 'absent', 'fenced']),
            fence_id=dict(type='str'),
            clear_fence=dict(type='bool', default=False),
            runtime=dict(type='str', default='process', choices=['docker', 'podman', 'process']),
            image=dict(type='str'),
            command=dict(type='list', elements='str'),
            args=dict(type='list', elements='str'),
            resume_from=dict(type='path'),
            resume_arg=dict(type='list', elements='str', default=['--resume', '{checkpoint}']),
            gpus=dict(type='raw'),
            env=dict(type='dict'),
            volumes=dict(type='list', elements='str'),
            checkpoint_dir=dict(type='path'),
            checkpoint_signal=dict(type='str', default='SIGUSR1'),
            checkpoint_command=dict(type='list', elements='str'),
            workdir=dict(type='path'),
            gang=dict(type='dict', options=dict(
                name=dict(type='str', required=True), size=dict(type='int', required=True),
                rank=dict(type='int', required=True), nproc_per_node=dict(type='int', default=1),
                master_addr=dict(type='str', required=True), master_port=dict(type='int', default=29500),
                generation=dict(type='int', default=0), members=dict(type='list', elements='str', default=[]),
                layout=dict(type='str', default='member', choices=['member', 'shared']))),
            deadline=dict(type='float', default=60.0),
            stable_for=dict(type='float', default=0.0),
            signalled_at=dict(type='float'),
            stop_timeout=dict(type='float', default=30.0),
            recreate=dict(type='bool', default=False),
            workload_root=dict(type='path'),
            container_cli=dict(type='path'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    run = command_runner(module)
    with fail_on_exception(module):
        driver = create_driver(p['runtime'], run, module.get_bin_path, p['workload_root'], p['container_cli'])
        if p['state'] == 'started':
            unfenced = check_fence(p['workload_root'], p['name'], p['clear_fence'], module.check_mode)
            spec = build_spec(p)
            spec['gpus'] = pick_gpus(p['gpus'], lambda: gpu_facts(
                create_backend('auto', run, which=module.get_bin_path))['free_gpus'])
            result = ensure_started(driver, spec, module.check_mode, p['recreate'])
            if unfenced:
                result['changed'] = True
                result['fence_cleared'] = True
        elif p['state'] == 'checkpointed':
            result = ensure_checkpointed(driver, p['name'], module.check_mode, p['deadline'], p['checkpoint_dir'],
                                         p['stable_for'], p['signalled_at'])
        elif p['state'] == 'stopped':
            result = ensure_stopped(driver, p['name'], module.check_mode, p['stop_timeout'])
        elif p['state'] == 'fenced':
            result = ensure_fenced(driver, p['name'], p['workload_root'], p['fence_id'] or 'fenced', module.check_mode,
                                   p['stop_timeout'])
        else:
            result = ensure_absent(driver, p['name'], module.check_mode, p['stop_timeout'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
