# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""migration_source and migration_target: their arguments and their work, whoever runs it - the module (through
AnsibleModule) or its action plugin's lean run (plugin_utils/_lean.py, the standard library alone on the node).

``source_step(params, node)`` and ``target_step(params, node)`` take the checked arguments and a
:class:`._common.Node`; they return the result or raise the shared code's exceptions (the caller turns those into a
failure, in one place)."""

from __future__ import absolute_import, division, print_function

from ._common import stdlib_node
from ._gpu import create_backend
from ._http import module_fetch
from ._metadata import check_notice
from ._migration import (MigrationError, drivers, list_images, source_checkpoint, source_cleanup, source_release,
                         source_restart, source_transfer, target_describe, target_place, target_progress)
from ._transfer import PREFERRED_CIPHERS

__metaclass__ = type

SOURCE_SPEC = dict(
    argument_spec=dict(
        step=dict(type='str', required=True, choices=['checkpoint', 'release', 'transfer', 'cleanup', 'restart']),
        migration_id=dict(type='str', required=True),
        source=dict(type='str', required=True),
        workloads=dict(type='list', elements='str', default=[]),
        include_stopped=dict(type='bool', default=False),
        deadline=dict(type='float'),
        default_deadline=dict(type='float', default=30.0),
        safety_margin=dict(type='float', default=5.0),
        signalled_at=dict(type='float'),
        wait=dict(type='bool', default=True),
        provider=dict(type='str', default='auto', choices=['auto', 'aws', 'gcp', 'azure']),
        metadata_url=dict(type='str'),
        moving=dict(type='list', elements='dict', default=[]),
        assignments=dict(type='dict', default={}),
        transfer=dict(type='str', default='rsync', choices=['rsync', 'relay', 'shared']),
        ssh_ciphers=dict(type='str', default=PREFERRED_CIPHERS),
        progress_file=dict(type='path'),
        sealed=dict(type='list', elements='dict', default=[]),
        source_endpoint=dict(type='dict'),
        stop_timeout=dict(type='float', default=30.0),
        stop=dict(type='str', default='auto', choices=['auto', 'graceful']),
        emergency=dict(type='dict', default={}),
        choices=dict(type='dict', default={}),
        bwlimit=dict(type='int', default=0),
        workload_root=dict(type='path'),
        container_cli=dict(type='path'),
    ),
)

TARGET_SPEC = dict(
    argument_spec=dict(
        step=dict(type='str', required=True, choices=['describe', 'place', 'progress']),
        migration_id=dict(type='str'),
        target=dict(type='str', required=True),
        placements=dict(type='list', elements='dict', default=[]),
        placed=dict(type='dict', default={}),
        checkpoint_root=dict(type='path'),
        resume_timeout=dict(type='float', default=120.0),
        workload_root=dict(type='path'),
        container_cli=dict(type='path'),
        list_images=dict(type='bool', default=True),
        lifecycle=dict(type='str', default='spot'),
        check_notice=dict(type='bool', default=False),
        provider=dict(type='str', default='auto', choices=['auto', 'aws', 'gcp', 'azure']),
        metadata_url=dict(type='str'),
    ),
    required_if=[('step', 'place', ['migration_id']), ('step', 'progress', ['migration_id'])],
)


def source_step(p, node):
    """One step of migration_source (``p['step']``) on this node."""
    mid, source = p['migration_id'], p['source']
    if p['step'] == 'transfer':
        return source_transfer(node.run, mid, source, p['sealed'], p['assignments'], p['transfer'],
                               p['source_endpoint'], p['ssh_ciphers'])
    by_runtime = drivers(node.run, node.which, p['workload_root'], p['container_cli'], warn=node.warn)
    if p['step'] == 'checkpoint':
        deadline = p['deadline']
        if deadline is None:
            notice = check_notice(module_fetch, {'provider': p['provider'], 'metadata_url': p['metadata_url'],
                                                 'fail_on_error': False, 'timeout': 3.0})
            deadline = notice.get('seconds_left')
            if deadline is None:
                deadline = p['default_deadline']
        return source_checkpoint(by_runtime, mid, source, p['workloads'], p['include_stopped'], deadline,
                                 p['safety_margin'], p['signalled_at'], node.check_mode, node.warn, wait=p['wait'])
    if p['step'] == 'release':
        return source_release(by_runtime, node.run, mid, source, p['moving'], p['assignments'], p['transfer'],
                              node.check_mode, p['stop_timeout'], p['emergency'], p['stop'], p['ssh_ciphers'],
                              p['progress_file'], p['choices'], p['bwlimit'])
    if p['step'] == 'cleanup':
        return source_cleanup(by_runtime, mid, source, [w['name'] for w in p['moving']], node.check_mode)
    return source_restart(by_runtime, mid, source, p['moving'], p['sealed'], node.check_mode)


def target_step(p, node):
    """One step of migration_target (``p['step']``) on this node."""
    if p['step'] == 'describe':
        notice_params = {'provider': p['provider'], 'metadata_url': p['metadata_url'], 'fail_on_error': False}
        clis = [p['container_cli']] if p['container_cli'] else [node.which('podman'), node.which('docker')]
        return target_describe(
            p['target'], p['lifecycle'], lambda: create_backend('auto', node.run, which=node.which),
            (lambda: check_notice(module_fetch, notice_params)) if p['check_notice'] else None,
            (lambda: list_images(node.run, clis)) if p['list_images'] else None)
    if p['step'] == 'place':
        return target_place(node.run, node.which, p['migration_id'], p['target'], p['placements'],
                            p['checkpoint_root'], node.check_mode, p['workload_root'], p['container_cli'])
    result = target_progress(p['migration_id'], p['target'], p['placed'], p['resume_timeout'], node.check_mode)
    if result['errors']:
        raise MigrationError('; '.join(result['errors']), **result)
    return result


def _lean(step, params, check_mode):
    node = stdlib_node(check_mode)
    result = step(params, node)
    if node.warnings:
        result['warnings'] = list(result.get('warnings') or []) + node.warnings
    return result


def lean_source_step(params, check_mode=False):
    """migration_source's lean run (the action plugin's entry): the standard library alone."""
    return _lean(source_step, params, check_mode)


def lean_target_step(params, check_mode=False):
    """migration_target's lean run (the action plugin's entry): the standard library alone."""
    return _lean(target_step, params, check_mode)
