# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place where plain exceptions from shared code become ``fail_json``."""

from __future__ import absolute_import, division, print_function

import contextlib
import json
import os
import tempfile
import time

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


def write_atomic(path, text, mode=None, durable=False):
    """``text`` into ``path`` through a unique temporary file in the same directory and one rename.

    Readers see the old content or the new, never a part; two writers never share a temporary; a failure leaves
    no temporary behind. The file is created private (``0600``) unless ``mode`` says otherwise; ``durable`` syncs
    it to disk before the rename (manifests and replica pointers, which must survive the node going away).
    """
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path, data, mode=None, durable=False, indent=1):
    """``data`` as sorted-key JSON into ``path``, atomically (see ``write_atomic``)."""
    return write_atomic(path, json.dumps(data, indent=indent, sort_keys=True), mode=mode, durable=durable)


def command_runner(module):
    """The one way modules run commands: argv lists, ``LC_ALL=C``, never a shell.

    Returns ``run(argv) -> (rc, stdout, stderr)`` for shared code that takes a runner.
    """
    def run(argv, data=None):
        return module.run_command(list(argv), data=data, check_rc=False,
                                  environ_update={'LC_ALL': 'C', 'LANG': 'C'})
    return run


LOG_FORMATS = ('text', 'json')


class Warning_(str):
    """A log message that is a warning (a ``str``: a plain log callable prints it as it is)."""
    level = 'warning'


def log_line(epoch, message, log_format='text', level=None, logger='spot_migration.agent'):
    """One log line, the agent's and the watcher's alike: date (UTC, ISO 8601, milliseconds), level (``level``, else
    the message's own, see Warning_), message; or the same as one JSON object (``time``, ``level``, ``logger``,
    ``message``)."""
    stamp = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(epoch)) + '.%03dZ' % int((epoch % 1) * 1000)
    level = level or getattr(message, 'level', 'info')
    if log_format == 'json':
        return json.dumps({'time': stamp, 'level': level, 'logger': logger, 'message': str(message)})
    return '%s %-7s %s' % (stamp, level, message)


class Node(object):
    """What a step needs of the node it runs on, whoever runs it (a module, the lean run of its action plugin, the
    agent): ``run(argv, data=None) -> (rc, stdout, stderr)``, ``which(name) -> path or None``, ``warn(message)``,
    ``check_mode``."""

    def __init__(self, run, which, warn, check_mode=False):
        self.run, self.which, self.warn, self.check_mode = run, which, warn, bool(check_mode)
        self.warnings = []


def module_node(module):
    """The Node of a module: its run_command (command_runner), get_bin_path, warn and check mode."""
    return Node(command_runner(module), module.get_bin_path, module.warn, module.check_mode)


SBIN = ('/sbin', '/usr/sbin', '/usr/local/sbin')


def stdlib_node(check_mode=False):
    """A Node in the standard library alone, the same behaviour as module_node: argv lists with ``LC_ALL=C``, never
    a shell, standard input closed unless ``data`` is given; ``which`` also looks in the sbin directories; warnings
    kept in ``node.warnings`` for the result."""
    import shutil
    import subprocess

    def run(argv, data=None):
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=dict(os.environ, LC_ALL='C', LANG='C'))
        except OSError as exc:
            raise SpotMigrationError('%s could not be run: %s' % (argv[0], exc), cmd=argv, rc=getattr(exc, 'errno', 2))
        data = data if not data or data.endswith('\n') else data + '\n'
        out, err = proc.communicate(data.encode('utf-8') if data else None)
        return proc.returncode, out.decode('utf-8', 'replace'), err.decode('utf-8', 'replace')

    def which(name):
        path = os.pathsep.join([os.environ.get('PATH', '')] + [d for d in SBIN if os.path.isdir(d)])
        return shutil.which(name, path=path)

    node = Node(run, which, None, check_mode)
    node.warn = node.warnings.append
    return node
