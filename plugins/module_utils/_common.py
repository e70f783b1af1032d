# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place where plain exceptions from shared code become ``fail_json``."""

from __future__ import absolute_import, division, print_function

import contextlib

__metaclass__ = type


class SpotMigrationError(Exception):
    """Shared code raises this (or a subclass) with a message naming the failing value.

    ``details`` are returned alongside ``msg`` by ``fail_on_exception``.
    """

    def __init__(self, message, **details):
        super(SpotMigrationError, self).__init__(message)
        self.details = details


@contextlib.contextmanager
def fail_on_exception(module, exceptions=None):
    """Run a block; turn the shared code's exceptions into ``module.fail_json``."""
    from ._checkpoint import CheckpointError
    from ._gpu import GpuError
    from ._notice import NoticeError
    from ._placement import PlacementError
    from ._workload import WorkloadError
    handled = tuple(exceptions or ()) + (SpotMigrationError, NoticeError, GpuError, CheckpointError, WorkloadError,
                                         PlacementError)
    try:
        yield
    except handled as exc:
        module.fail_json(msg=str(exc), **getattr(exc, 'details', {}))


def command_runner(module):
    """The one way modules run commands: argv lists, ``LC_ALL=C``, never a shell.

    Returns ``run(argv) -> (rc, stdout, stderr)`` for shared code that takes a runner.
    """
    def run(argv, data=None):
        return module.run_command(list(argv), data=data, check_rc=False,
                                  environ_update={'LC_ALL': 'C', 'LANG': 'C'})
    return run
