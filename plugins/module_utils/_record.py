# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The end of a migrate run on the controller, in one step: release the run's reservations (started workloads hold
their GPUs now, failed ones hold nothing) and write each source's migration record, atomically (a reader never sees
half a record). The ``migration_record`` module and its action plugin share it."""

from __future__ import absolute_import, division, print_function

import json
import os

from ._common import write_atomic
from ._placement import release
from ._plan import record_path

__metaclass__ = type

MODULE_SPEC = {
    'argument_spec': dict(
        records=dict(type='list', elements='dict', required=True),
        record_dir=dict(type='path', required=True),
        reservation_file=dict(type='path'),
        release=dict(type='list', elements='dict', default=[]),
    ),
}


def finish(p, check_mode):
    """Release ``release`` (reservations, by owner) from ``reservation_file``; write every record that has
    migrations as ``<record_dir>/<id>.json``. Returns the records, the paths written and how many were released."""
    released = 0
    if p.get('reservation_file'):
        for reservation in p.get('release') or []:
            if reservation.get('owner') and release(p['reservation_file'], reservation['owner'], check_mode)['changed']:
                released += 1
    todo = [r for r in p['records'] if r.get('migrations')]
    paths = [record_path(p['record_dir'], r) for r in todo]  # every id checked before anything is written
    if todo and not check_mode:
        if not os.path.isdir(p['record_dir']):
            os.makedirs(p['record_dir'], 0o750)
        for path, record in zip(paths, todo):
            write_atomic(path, json.dumps(record, indent=4, sort_keys=True) + '\n', mode=0o640)
    return {'changed': bool(todo) or released > 0, 'records': p['records'], 'written': paths, 'released': released}
