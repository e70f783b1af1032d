# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""migration_record on the controller runs in-process (see plugin_utils/_local.py); elsewhere as a module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.spot.migration.plugins.module_utils._record import MODULE_SPEC, finish
from ansible_collections.spot.migration.plugins.plugin_utils._local import LocalAction


class ActionModule(LocalAction):
    SPEC = MODULE_SPEC

    def execute(self, params, check_mode):
        return finish(params, check_mode)
