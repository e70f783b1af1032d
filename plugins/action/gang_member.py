# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gang_member runs lean on the node (see plugin_utils/_lean.py): its steps are on a gang migration's critical path,
on every member at once."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.spot.migration.plugins.module_utils._gang_steps import GANG_SPEC
from ansible_collections.spot.migration.plugins.plugin_utils._lean import LeanAction


class ActionModule(LeanAction):
    SPEC = GANG_SPEC
    ENTRY = ('_gang_steps', 'lean_gang_step')
    CHECK_MODE = True
