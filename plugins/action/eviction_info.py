# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""eviction_info runs lean on the node (see plugin_utils/_lean.py): the probe of every sweep, on every node.

An ``https://`` metadata URL runs the module instead: certificate handling is ansible's, in module_utils.urls.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.spot.migration.plugins.module_utils._metadata import EVICTION_INFO_SPEC
from ansible_collections.spot.migration.plugins.plugin_utils._lean import LeanAction


class ActionModule(LeanAction):
    SPEC = EVICTION_INFO_SPEC
    ENTRY = ('_http', 'eviction_info')
    CHECK_MODE = True
