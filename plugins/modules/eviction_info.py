#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: eviction_info
short_description: Report whether the cloud is about to take this spot / preemptible node away
version_added: 1.0.0
description:
  - Probes the instance metadata service of AWS (IMDS), Google Compute Engine or Azure (Scheduled Events)
    and returns one normalised eviction notice.
  - Only C(spot_interruption), C(preempt) and C(terminate) notices set RV(evicting=true) by default;
    rebalance recommendations and scheduled maintenance are reported with their own RV(kind) and
    RV(evicting=false) (see O(evicting_kinds)).
  - An unreachable or nonsensical metadata service is an error, never "no notice". Server errors (5xx)
    and dropped connections are retried until O(timeout) runs out; redirects, 401/403, bodies that are
    not what the cloud documents, and bodies over 64 KiB fail at once.
  - "What identifies a notice (RV(notice_id), stable across polls): AWS - instance id, action and the
    C(time) of C(spot/instance-action) (rebalance: C(noticeTime); maintenance: C(EventId)); GCP - instance id
    and preemption (a VM is preempted once per boot; maintenance: the event value and its ETag);
    Azure - the event's C(EventId)."
  - Azure events count only when their C(Resources) list names this VM (its compute C(name)); events for
    other VMs of the availability set are ignored. C(Freeze), C(Reboot) and C(Redeploy) are maintenance.
  - No proxies are used and IMDSv2 session tokens never appear in results or logs.
author:
  - spot.migration contributors (@spot-migration)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - spot.migration.lean
  - spot.migration.metadata
attributes:
  check_mode:
    support: full
    details: This module never changes anything.
  diff_mode:
    support: N/A
    details: This module never changes anything.
  platform:
    platforms: posix
options:
  wait:
    description:
      - Block up to this many seconds for an evicting notice and return as soon as one appears.
      - GCP uses the metadata server's hanging GET (C(wait_for_change) with C(last_etag)); AWS and Azure are
        polled every O(poll_interval) seconds.
      - V(0) probes once.
    type: float
    default: 0
  poll_interval:
    description: Seconds between polls while waiting on AWS and Azure.
    type: float
    default: 1.0
  fail_on_error:
    description:
      - When V(false), a failed probe returns RV(evicting=false) with RV(error) set instead of failing the task.
    type: bool
    default: true
  evicting_kinds:
    description: Which notice kinds set RV(evicting=true).
    type: list
    elements: str
    choices: [spot_interruption, preempt, terminate, rebalance, maintenance]
    default: [spot_interruption, preempt, terminate]
notes:
  - Production defaults are C(http://169.254.169.254) (AWS, Azure) and C(http://metadata.google.internal) (GCP).
seealso:
  - name: AWS Spot Instance interruption notices
    description: The instance-action document and its two-minute warning.
    link: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html
  - name: GCE preemption and metadata server
    description: instance/preempted, maintenance-event and wait-for-change.
    link: https://cloud.google.com/compute/docs/metadata/querying-metadata
  - name: Azure Scheduled Events
    description: The scheduledevents document, event types and StartRequests.
    link: https://learn.microsoft.com/en-us/azure/virtual-machines/linux/scheduled-events
'''

EXAMPLES = r'''
- name: Is this node being taken away?
  spot.migration.eviction_info:
  register: notice

- name: Wait up to 60 s for a notice from a simulator on the local fleet
  spot.migration.eviction_info:
    provider: gcp
    metadata_url: http://127.0.0.1:18080
    wait: 60

- name: Report a broken metadata service without failing the play
  spot.migration.eviction_info:
    fail_on_error: false
  register: probe

- name: Count maintenance as an eviction too
  spot.migration.eviction_info:
    evicting_kinds: [spot_interruption, preempt, terminate, maintenance]
'''

RETURN = r'''
evicting:
  description: Whether the node is being taken away (a notice of one of O(evicting_kinds)).
  returned: always
  type: bool
  sample: true
provider:
  description: The cloud that answered (V(none) when the probe failed before knowing).
  returned: always
  type: str
  sample: aws
kind:
  description: C(spot_interruption), C(rebalance), C(maintenance), C(preempt), C(terminate) or C(none).
  returned: always
  type: str
  sample: spot_interruption
action:
  description: What the cloud will do (AWS C(terminate)/C(stop)/C(hibernate); GCP C(stop); Azure the event type, lower case).
  returned: always
  type: str
  sample: terminate
deadline:
  description: When the node goes away, ISO 8601 UTC; null when the cloud gives no time (GCP preemption, about 30 s).
  returned: always
  type: str
  sample: "2026-11-30T04:00:33Z"
seconds_left:
  description: Seconds from RV(checked_at) to RV(deadline), or null.
  returned: always
  type: float
  sample: 118.6
notice_id:
  description: Stable identifier of this notice, the same on every poll while it stands.
  returned: always
  type: str
  sample: aws-38db7d10edd8c9d4
instance_id:
  description: The instance id (AWS C(i-...), GCE numeric id, Azure C(vmId)).
  returned: always
  type: str
raw:
  description: The payloads as parsed (never tokens or headers).
  returned: always
  type: dict
  contains:
    instance_action: {description: "AWS: the C(spot/instance-action) document.", type: dict, returned: on AWS with a notice}
    termination_time: {description: "AWS: the legacy C(spot/termination-time) text.", type: str, returned: on AWS with one}
    rebalance: {description: "AWS: the C(events/recommendations/rebalance) document.", type: dict, returned: on AWS with one}
    maintenance:
      description: "AWS: the C(events/maintenance/scheduled) documents."
      type: list
      elements: dict
      returned: on AWS with one
    preempted: {description: "GCP: the C(instance/preempted) value (C(TRUE) or C(FALSE)).", type: str, returned: on GCP}
    maintenance_event: {description: "GCP: the C(instance/maintenance-event) value.", type: str, returned: on GCP}
    DocumentIncarnation: {description: "Azure: the Scheduled Events document's incarnation.", type: int, returned: on Azure}
    Events:
      description: "Azure: the Scheduled Events (C(EventId), C(EventType), C(Resources), C(NotBefore), ...)."
      type: list
      elements: dict
      returned: on Azure
checked_at:
  description: When the answer was read, ISO 8601 UTC.
  returned: always
  type: str
notices:
  description: Every notice found, the most urgent first being the one reported at the top level.
  returned: always
  type: list
  elements: dict
  contains:
    evicting: {description: Whether this notice takes the node away (one of O(evicting_kinds))., type: bool}
    provider: {description: "C(aws), C(gcp) or C(azure).", type: str}
    kind: {description: "C(spot_interruption), C(rebalance), C(maintenance), C(preempt) or C(terminate).", type: str}
    action: {description: What the cloud will do., type: str}
    deadline: {description: "When the node goes away, ISO 8601 UTC, or null.", type: str}
    seconds_left: {description: "Seconds left until the deadline, or null.", type: float}
    notice_id: {description: Stable identifier of the notice., type: str}
    instance_id: {description: The instance id., type: str}
    checked_at: {description: "When it was read, ISO 8601 UTC.", type: str}
waited:
  description: Seconds spent waiting (only with O(wait)).
  returned: when O(wait) > 0 and the probe succeeded
  type: float
elapsed:
  description: Seconds the whole check took.
  returned: always
  type: float
error:
  description: Why the probe failed (with O(fail_on_error=false)); null on success.
  returned: always
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.spot.migration.plugins.module_utils._common import fail_on_exception
from ansible_collections.spot.migration.plugins.module_utils._http import eviction_info
from ansible_collections.spot.migration.plugins.module_utils._metadata import EVICTION_INFO_SPEC


def main():
    module = AnsibleModule(supports_check_mode=True, **EVICTION_INFO_SPEC)
    with fail_on_exception(module):
        notice = eviction_info(module.params)
    module.exit_json(changed=False, **notice)


if __name__ == '__main__':
    main()
