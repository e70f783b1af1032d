# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""migration_target runs lean on the node (see plugin_utils/_lean.py): describe, place and progress are on every
migration's critical path, on every target of a wave.

An ``https://`` metadata URL (read by C(describe) with C(check_notice)) runs the module instead: certificate handling
is ansible's, in module_utils.urls.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.spot.migration.plugins.module_utils._steps import TARGET_SPEC
from ansible_collections.spot.migration.plugins.plugin_utils._lean import LeanAction


class ActionModule(LeanAction):
    SPEC = TARGET_SPEC
    ENTRY = ('_steps', 'lean_target_step')
    CHECK_MODE = True
