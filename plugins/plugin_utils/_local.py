# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugins for modules whose work is on the controller's own files (reservations, records).

Run on the controller (``delegate_to: localhost``, or a play on localhost), the module's logic runs in the worker
process itself, with the module's own argument spec: no interpreter started, no module packaged and shipped, which
is most of what such a task costs (half a second and more on a small controller, several per migration). Anywhere
else the module runs as usual, on that host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase


class LocalAction(ActionBase):
    """Subclasses set ``SPEC`` (``{argument_spec, mutually_exclusive, required_one_of, ...}``) and ``execute``."""

    TRANSFERS_FILES = False
    SPEC = {}

    def execute(self, params, check_mode):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, tmp=None, task_vars=None):
        result = super(LocalAction, self).run(tmp, task_vars)
        if self._connection.transport != 'local':
            result.update(self._execute_module(module_name=self._task.action, module_args=self._task.args,
                                               task_vars=task_vars))
            return result
        spec = dict(self.SPEC)
        validator = ArgumentSpecValidator(spec.pop('argument_spec'), **spec)
        validated = validator.validate(self._task.args)
        if validated.error_messages:
            result.update(failed=True, msg='; '.join(validated.error_messages))
            return result
        try:
            result.update(self.execute(validated.validated_parameters, bool(self._task.check_mode)))
        except Exception as exc:  # noqa: BLE001 - reported like the module reports it, with the details it carries
            result.update(getattr(exc, 'details', None) or {})
            result.update(failed=True, msg=str(exc))
        return result
