# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):

    # Modules whose action plugin runs them lean (plugins/plugin_utils/_lean.py).
    DOCUMENTATION = r'''
options: {}
notes:
  - The arguments are checked on the controller and the work, which needs only Python's standard library on the node,
    runs there in C(python -I -S) without the AnsiballZ wrapper (one SSH round trip, as with pipelining; a fraction of
    the CPU a module run costs the node). It runs as an ordinary module instead for an C(https://) metadata URL, an
    async task, a task or play C(environment), privilege escalation without pipelining, before the node's Python has
    been discovered, or when the host variable C(spot_lean_modules) is false. The result is the same either way.
'''
