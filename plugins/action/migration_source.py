# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""migration_source runs lean on the node (see plugin_utils/_lean.py); a long transfer shows its progress in the
play output meanwhile.

For ``step=release`` with rsync the step writes its transfer's progress to a file on the source (its
``progress_file``). The step runs exactly as it would without the progress (one SSH round trip); only when it has
run longer than ``spot_transfer_progress_after`` seconds does this plugin read that file, over the same kept-open
SSH connection, every ``spot_transfer_progress_every`` seconds, and print one line per read. A transfer that is over
sooner costs nothing more. An ``https://`` metadata URL runs the module instead (ansible's certificate handling).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import shlex
import threading
import uuid

from ansible.utils.display import Display

from ansible_collections.spot.migration.plugins.module_utils._steps import SOURCE_SPEC
from ansible_collections.spot.migration.plugins.plugin_utils._lean import LeanAction

display = Display()


def release_lines(args, result, check_mode):
    """What a release says beside its result: in check mode what would move where; otherwise each workload whose
    emergency checkpoint did not come in time (the newest complete one on disk moved instead)."""
    lines = []
    for row in result.get('sealed') or []:
        if not row.get('checkpoint'):
            continue
        if check_mode:
            lines.append('would move %s: checkpoint %s (step %s, %s bytes, %s) -> %s by %s, then verify, rename into '
                         'place, resume' % (row['name'], row['checkpoint'], row.get('step'), row.get('bytes'),
                                            row.get('format'), row.get('target'), args.get('transfer', 'rsync')))
        elif 'emergency_ok' in row and not row['emergency_ok']:
            lines.append('%s: %s; the newest complete checkpoint on disk (step %s) moved instead'
                         % (row['name'], row.get('emergency_error'), row.get('step')))
    return lines


def progress_line(host, data):
    """One line of progress, from the module's progress file."""
    total = data.get('total') or 0
    done = data.get('bytes') or 0
    name = data.get('workload') or data.get('checkpoint')
    values = (host, name, done / 2.0 ** 20, total / 2.0 ** 20, data.get('percent'), data.get('rate'))
    return '%s: %s %.0f/%.0f MiB (%s%%, %s)' % values


class ActionModule(LeanAction):
    SPEC = SOURCE_SPEC
    ENTRY = ('_steps', 'lean_source_step')
    CHECK_MODE = True

    def run(self, tmp=None, task_vars=None):
        result = super(LeanAction, self).run(tmp, task_vars)  # ActionBase's; self.execute runs the step
        task_vars = task_vars or {}
        args = dict(self._task.args)
        after = float(task_vars.get('spot_transfer_progress_after', 5.0))
        every = max(0.2, float(task_vars.get('spot_transfer_progress_every', 5.0)))
        rsync_release = args.get('step') == 'release' and args.get('transfer', 'rsync') == 'rsync'
        watch = rsync_release and not (self._task.check_mode or args.get('progress_file') or self._task.async_val)
        watch = watch and after >= 0
        if not watch:
            result.update(self.execute(args, task_vars))
            return self._said(args, result, task_vars)
        # A name only this run knows, in the node's /tmp; the module writes it atomically and removes it.
        path = '/tmp/.spot-migration-progress-%s.json' % uuid.uuid4().hex
        args['progress_file'] = path
        box = {}

        def execute():
            try:
                box['result'] = self.execute(args, task_vars)
            except Exception as exc:  # noqa: BLE001 - raised again in the task's own thread below
                box['error'] = exc

        worker = threading.Thread(target=execute, name='migration_source')
        worker.start()
        worker.join(after)
        host = task_vars.get('inventory_hostname') or 'source'
        last = None
        while worker.is_alive():
            try:
                read = self._low_level_execute_command('cat %s 2>/dev/null || true' % shlex.quote(path), sudoable=False)
                data = json.loads(read.get('stdout') or 'null')
            except Exception:  # noqa: BLE001 - progress is a courtesy: a failed read shows nothing
                data = None
            if isinstance(data, dict) and data.get('at') != last:
                last = data.get('at')
                display.display(progress_line(host, data))
            worker.join(every)
        if 'error' in box:
            raise box['error']
        result.update(box['result'])
        return self._said(args, result, task_vars)

    def _said(self, args, result, task_vars):
        if args.get('step') == 'release':
            host = task_vars.get('inventory_hostname') or 'source'
            for line in release_lines(args, result, self._task.check_mode):
                display.display('%s: %s' % (host, line))
        return result
