# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the migrate playbook's filters share: hostvars as plain values, MigrationError as a filter error."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError


def plain(value):
    """hostvars and lazy dicts as plain values."""
    if hasattr(value, 'items'):
        return dict((k, plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def guard(func):
    def wrapped(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MigrationError as exc:
            raise AnsibleFilterError(str(exc))
    wrapped.__name__ = func.__name__
    wrapped.__doc__ = func.__doc__
    return wrapped


CONNECTION = ('ansible_host', 'ansible_port', 'ansible_user', 'ansible_ssh_private_key_file', 'ansible_ssh_common_args',
              'spot_checkpoint_root', 'spot_ssh_config', 'spot_lifecycle', 'spot_provider')
RESULTS = ('migrate_checkpoint', 'migrate_release', 'migrate_moved', 'migrate_placed', 'migrate_progress',
           'migrate_described')


def host_vars(hostvars, hosts, names=CONNECTION + RESULTS):
    """The named variables of ``hosts`` as plain values (only those: templating every variable of a host is slow and
    fails on any unrelated undefined one)."""
    out = {}
    for host in hosts:
        if not host or host not in hostvars:
            continue
        hv = hostvars[host]
        out[host] = dict((n, plain(hv[n])) for n in names if n in hv)
    return out
