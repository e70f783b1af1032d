# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugins for modules whose work on the node is standard library only (the probe of every sweep).

A module run as an AnsiballZ payload starts Python, unpacks the payload and compiles ``ansible.module_utils.basic``
and everything it imports from source, every time: about 0.2 CPU-seconds on the node before the module's own work
starts, which is most of what one probe costs and what a sweep over many nodes on small machines waits for. Here the
module's arguments are checked on the controller with the module's own argument spec, and its logic - plain
functions in ``module_utils`` that import nothing from Ansible - runs on the node in ``python -I -S`` over the same
connection (one SSH round trip, as with pipelining): the bootstrap, the module_utils sources it needs and the
arguments travel on standard input, never in the command line.

The module runs as usual instead when the lean run cannot be sure to do the same: the interpreter is not known yet
(discovery), the task is async, the connection cannot pipe standard input, privilege escalation needs a terminal,
``ANSIBLE_KEEP_REMOTE_FILES`` is set, the subclass says so (``use_module``), or the host sets ``spot_lean_modules``
to false.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
import shlex
from importlib import util as importlib_util

from ansible import constants as C
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

PACKAGE = 'ansible_collections.spot.migration.plugins.module_utils'

# Runs on the node (Python 3.8+, no site, no environment): defines the sources as modules in dependency order,
# calls the entry function with the checked arguments, prints its result (or the failure) as one JSON object.
# An exception raised by our module_utils is a failure with its message (and its ``details``), like the module's
# fail_json; anything else also carries the traceback, like a module that crashed.
BOOTSTRAP = r'''
import json, sys, traceback
def _run():
    payload = json.loads(sys.stdin.read())
    package = payload['package']
    parts = package.split('.')
    for i in range(1, len(parts) + 1):
        name = '.'.join(parts[:i])
        if name not in sys.modules:
            mod = type(sys)(name)
            mod.__path__ = []
            sys.modules[name] = mod
    for short, source in payload['sources']:
        name = package + '.' + short
        mod = type(sys)(name)
        mod.__package__ = package
        mod.__file__ = '<spot.migration lean>/' + short + '.py'
        sys.modules[name] = mod
        exec(compile(source, mod.__file__, 'exec'), mod.__dict__)
    entry = getattr(sys.modules[package + '.' + payload['entry'][0]], payload['entry'][1])
    try:
        result = entry(payload['params'], payload['check_mode'])
    except Exception as exc:
        result = dict(getattr(exc, 'details', None) or {}, failed=True, msg=str(exc) or type(exc).__name__)
        if not type(exc).__module__.startswith(package + '.'):
            result['exception'] = traceback.format_exc()
    def plain(value):
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, bytes):
            return value.decode('utf-8', 'replace')
        raise TypeError('%r is not JSON serializable' % (value,))
    sys.stdout.write(json.dumps(result, default=plain))
_run()
'''

# A top-level or nested import of one of our module_utils: ``from ._x import`` or the full collection name.
_IMPORT = re.compile(r'^\s*from\s+(?:\.|ansible_collections\.spot\.migration\.plugins\.module_utils\.)(_\w+)\s+import',
                     re.MULTILINE)
_TOP_IMPORT = re.compile(r'^from\s+(?:\.|ansible_collections\.spot\.migration\.plugins\.module_utils\.)(_\w+)\s+import',
                         re.MULTILINE)
_SOURCES = {}


def _source(short):
    if short not in _SOURCES:
        spec = importlib_util.find_spec(PACKAGE + '.' + short)
        if spec is None or not spec.origin:
            raise LookupError('module_utils %s of spot.migration not found' % short)
        with open(spec.origin, 'rb') as handle:
            _SOURCES[short] = handle.read().decode('utf-8')
    return _SOURCES[short]


def sources_for(entry_module):
    """``[(short name, source)]`` of ``entry_module`` and every module_utils of ours it imports (at any depth, also
    inside functions), each after the ones it imports at its top level."""
    found, order = {}, []
    pending = [entry_module]
    while pending:
        short = pending.pop()
        if short in found:
            continue
        found[short] = _source(short)
        pending.extend(_IMPORT.findall(found[short]))

    def visit(short, path):
        if short in order or short in path:
            return
        for dep in _TOP_IMPORT.findall(found[short]):
            visit(dep, path + (short,))
        order.append(short)

    for short in sorted(found):
        visit(short, ())
    return [(short, found[short]) for short in order]


class LeanAction(ActionBase):
    """Subclasses set ``SPEC`` (``{argument_spec, mutually_exclusive, ...}``, the module's own), ``ENTRY``
    (``(module_utils name, function)``: ``function(params, check_mode) -> result dict``, raising our errors on failure) and
    ``CHECK_MODE`` (whether the module supports check mode); ``use_module(params)`` says when the module runs instead."""

    TRANSFERS_FILES = False
    SPEC = {}
    ENTRY = (None, None)
    CHECK_MODE = False

    def use_module(self, params):
        """The module itself for an ``https://`` metadata URL: certificates are ansible's to check (module_utils.urls,
        which the lean run does not carry)."""
        return str(params.get('metadata_url') or '').lower().startswith('https:')

    def _lean_interpreter(self, task_vars):
        """The node's Python as argv, or None when only the module's own discovery can tell."""
        from ansible.executor.module_common import _get_shebang
        use_vars = task_vars
        if self._task.delegate_to:
            use_vars = (task_vars.get('ansible_delegated_vars') or {}).get(self._task.delegate_to) or task_vars
        try:
            interpreter = _get_shebang(u'/usr/bin/python', use_vars, self._templar,
                                       remote_is_local=bool(getattr(self._connection, '_remote_is_local', False)))[1]
        except Exception as exc:  # noqa: BLE001 - discovery needed, or an ansible-core that works otherwise: the module
            display.vvv('spot.migration: %s runs as a module: %s' % (self._task.action, exc))
            return None
        argv = shlex.split(str(interpreter or ''))
        return argv or None

    def _lean_possible(self, task_vars):
        conn = self._connection
        if not boolean(task_vars.get('spot_lean_modules', True), strict=False):
            return False
        if self._task.async_val or C.DEFAULT_KEEP_REMOTE_FILES or not getattr(conn, 'has_pipelining', False):
            return False
        environment = {}
        self._compute_environment_string(environment)
        if environment:  # the task's or play's environment: the module's wrapper sets it
            return False
        if conn.become and not conn.is_pipelining_enabled():
            return False
        return True

    def run(self, tmp=None, task_vars=None):
        result = super(LeanAction, self).run(tmp, task_vars)
        result.update(self.execute(dict(self._task.args), task_vars or {}))
        return result

    def execute(self, args, task_vars):
        """The module's result for ``args``: from the lean run where it can be, else from the module itself."""
        spec = dict(self.SPEC)
        validated = ArgumentSpecValidator(spec.pop('argument_spec'), **spec).validate(args)
        if validated.error_messages:
            return {'failed': True, 'msg': '; '.join(validated.error_messages)}
        params = validated.validated_parameters
        interpreter = self._lean_interpreter(task_vars) if self._lean_possible(task_vars) else None
        if interpreter is None or self.use_module(params):
            return self._execute_module(module_name=self._task.action, module_args=args, task_vars=task_vars)
        if self._task.check_mode and not self.CHECK_MODE:
            return {'skipped': True, 'msg': 'remote module (%s) does not support check mode' % self._task.action}
        return self.run_lean(interpreter, params)

    def run_lean(self, interpreter, params):
        """Run ``ENTRY`` with ``params`` on the node; its result, or a failure naming rc, stdout and stderr."""
        display.vvv('spot.migration: %s runs lean (no AnsiballZ) with %s' % (self._task.action, interpreter[0]),
                    host=self._play_context.remote_addr)
        res = self._low_level_execute_command(' '.join(shlex.quote(a) for a in lean_argv(interpreter)), sudoable=True,
                                              in_data=lean_input(self.ENTRY, params, self._task.check_mode))
        return lean_result(self._task.action, res.get('rc'), res.get('stdout'), res.get('stderr'))


def lean_argv(interpreter):
    """The command on the node: the interpreter, isolated (no site, no PYTHON* variables), reading the bootstrap
    from the first line of its standard input."""
    return list(interpreter) + ['-I', '-S', '-c', 'import json,sys;exec(json.loads(sys.stdin.readline()))']


def lean_input(entry, params, check_mode=False):
    """Standard input of ``lean_argv``: the bootstrap (one JSON-quoted line), then the sources, entry, params and
    whether this is check mode."""
    payload = json.dumps({'package': PACKAGE, 'sources': sources_for(entry[0]), 'entry': list(entry),
                          'params': params, 'check_mode': bool(check_mode)})
    return (json.dumps(BOOTSTRAP) + '\n' + payload).encode('utf-8')


def lean_result(action, rc, stdout, stderr):
    """The task result from what the node printed: its JSON object, or a failure with rc, stdout and stderr."""
    stdout = (stdout or '').strip()
    try:
        data = json.loads(stdout)
    except ValueError:
        data = None
    if rc != 0 or not isinstance(data, dict):
        return {'failed': True, 'rc': rc, 'module_stdout': stdout[-4000:], 'module_stderr': (stderr or '')[-4000:],
                'msg': 'the lean run of %s on the node failed (rc %s); spot_lean_modules=false runs it as a module'
                       % (action, rc)}
    data.setdefault('changed', False)
    return data
