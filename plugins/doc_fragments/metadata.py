# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):

    # Options shared by everything that talks to an instance metadata service.
    DOCUMENTATION = r'''
options:
  provider:
    description:
      - Which cloud's metadata service to ask.
      - V(auto) reads the DMI/SMBIOS vendor strings first (C(/sys/class/dmi/id)), then sends one quick request
        per dialect. With O(metadata_url) set, the DMI strings are skipped and the URL decides.
    type: str
    choices: [auto, aws, gcp, azure]
    default: auto
  metadata_url:
    description:
      - Base URL of the metadata service, for tests, simulators and unusual clouds.
      - Defaults to C(http://169.254.169.254) for AWS and Azure and C(http://metadata.google.internal) for GCP.
    type: str
  timeout:
    description:
      - Seconds one probe may take in all, retries of 5xx answers and dropped connections included.
    type: float
    default: 5.0
  imds_version:
    description:
      - AWS only. V(v2) requires an IMDSv2 session token, V(v1) never asks for one, V(auto) asks and
        falls back to v1 only where IMDS refuses to issue tokens.
    type: str
    choices: [auto, v2, v1]
    default: auto
'''
