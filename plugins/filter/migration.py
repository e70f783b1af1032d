# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The migrate playbook's wiring: thin filters over module_utils/_plan.py (documented in the .yml files beside)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.spot.migration.plugins.module_utils import _plan
from ansible_collections.spot.migration.plugins.module_utils._migration import MigrationError


def _plain(value):
    """hostvars and lazy dicts as plain values."""
    if hasattr(value, 'items'):
        return dict((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _guard(func):
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


def _host_vars(hostvars, hosts, names=CONNECTION + RESULTS):
    """The named variables of ``hosts`` as plain values (only those: templating every variable of a host is slow and
    fails on any unrelated undefined one)."""
    out = {}
    for host in hosts:
        if not host or host not in hostvars:
            continue
        hv = hostvars[host]
        out[host] = dict((n, _plain(hv[n])) for n in names if n in hv)
    return out


@_guard
def migration_plan(variables, groups):
    return _plan.plan(_plain(variables), _plain(groups))


@_guard
def migration_candidates(the_plan, hostvars, groups, more=None):
    the_plan = _plain(the_plan)
    return _plan.candidates(the_plan, _host_vars(hostvars, the_plan['candidates']), _plain(groups), _plain(more))


@_guard
def migration_gather(hostvars, hosts, name):
    return _plan.gather(_host_vars(hostvars, list(hosts or []), (name,)), list(hosts or []), name)


@_guard
def migration_retry_requests(the_plan, source, release, assigned=None):
    return _plan.retry_requests(_plain(the_plan), source, _plain(release), _plain(assigned))


@_guard
def migration_targets(moved_by_source):
    return _plan.targets(_plain(moved_by_source))


@_guard
def migration_started_here(placed_by_target, source):
    return _plan.started_here(_plain(placed_by_target), source)


@_guard
def migration_requests(the_plan, checkpoints, unplaced=None):
    return _plan.requests(_plain(the_plan), _plain(checkpoints), _plain(unplaced))


@_guard
def migration_assignments(the_plan, source, reservations, hostvars, controller=False):
    reservations = _plain(reservations) or []
    hosts = [source] + [r.get('target') for r in reservations]
    return _plan.assignments(_plain(the_plan), source, reservations, _host_vars(hostvars, hosts), controller)


@_guard
def migration_endpoint(host, hostvars, controller=False):
    return _plan.endpoint(host, _host_vars(hostvars, [host]).get(host), controller=controller)


@_guard
def migration_moved(the_plan, source, checkpoint, release, retry=None, relay=None, source_root=None, restart=None,
                    assigned=None):
    return _plan.moved(_plain(the_plan), source, _plain(checkpoint), _plain(release), _plain(retry), _plain(relay),
                       source_root, _plain(restart), _plain(assigned))


@_guard
def migration_placements(moved_by_source, target=None, the_plan=None):
    return _plan.placements(_plain(moved_by_source), target, _plain(the_plan) if the_plan is not None else None)


@_guard
def migration_records(the_plan, hostvars, check_mode, reservations=None):
    the_plan = _plain(the_plan)
    moved = _plan.gather(_host_vars(hostvars, the_plan['sources'], ('migrate_moved',)), the_plan['sources'],
                         'migrate_moved')
    host_vars = _host_vars(hostvars, the_plan['sources'] + _plan.targets(moved))
    return _plan.records(the_plan, check_mode, _plan.per_source(the_plan, host_vars, _plain(reservations)))


@_guard
def migration_problems(records, check_mode):
    return _plan.problems(_plain(records), check_mode)


@_guard
def migration_fence_holds(entry):
    return _plan.fence_holds(_plain(entry))


class FilterModule(object):
    def filters(self):
        return dict((f.__name__, f) for f in (
            migration_plan, migration_candidates, migration_gather, migration_retry_requests, migration_targets,
            migration_started_here, migration_requests, migration_assignments, migration_endpoint,
            migration_moved, migration_placements, migration_records, migration_problems, migration_fence_holds))
