# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Turn one cloud's metadata payloads into the normalised eviction notice.

Pure functions over plain values: no I/O, no Ansible imports. The module
``eviction_info``, the node eviction agent and the EDA event source all share
this code. Every parser raises :class:`NoticeError` on a payload that makes no
sense; it never guesses "no notice" from garbage.

What identifies a notice (``notice_id``), per cloud:

* AWS: instance id + kind + the payload's own time (``instance-action``
  action and ``time``; rebalance ``noticeTime``; maintenance ``EventId``).
  AWS keeps ``time`` fixed while the notice stands, so repeated polls agree.
* GCP: instance id + ``preempted`` (a VM is preempted at most once per
  boot), or instance id + the ``maintenance-event`` value + its ETag.
* Azure: the event's ``EventId``, which Azure keeps for the life of the event
  (Scheduled and Started share it).
"""

from __future__ import absolute_import, division, print_function

import calendar
import hashlib
import json
import re
import time

__metaclass__ = type

PROVIDERS = ('aws', 'gcp', 'azure')
KINDS = ('spot_interruption', 'rebalance', 'maintenance', 'preempt', 'terminate', 'none')
DEFAULT_EVICTING_KINDS = ('spot_interruption', 'preempt', 'terminate')

AWS_ACTIONS = ('terminate', 'stop', 'hibernate')
GCP_MAINTENANCE_VALUES = ('NONE', 'MIGRATE_ON_HOST_MAINTENANCE', 'TERMINATE_ON_HOST_MAINTENANCE')
AZURE_EVENT_TYPES = ('Freeze', 'Reboot', 'Redeploy', 'Preempt', 'Terminate')
AZURE_EVENT_STATUSES = ('Scheduled', 'Started')

# The order in which simultaneous notices are reported: the most urgent first.
_KIND_RANK = {'spot_interruption': 0, 'preempt': 0, 'terminate': 0, 'maintenance': 2, 'rebalance': 3, 'none': 9}


class NoticeError(Exception):
    """A metadata payload could not be understood, or the service misbehaved."""


def iso_utc(epoch):
    """Format epoch seconds as ISO 8601 UTC with a ``Z`` suffix (second precision)."""
    if epoch is None:
        return None
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))


_ISO_RE = re.compile(
    r'^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$')


def parse_iso8601(text):
    """Parse an ISO 8601 timestamp into epoch seconds; a missing zone means UTC.

    Raises NoticeError naming the value when it is not a timestamp.
    """
    if not isinstance(text, str):
        raise NoticeError('expected an ISO 8601 timestamp, got %r' % (text,))
    match = _ISO_RE.match(text.strip())
    if not match:
        raise NoticeError('not an ISO 8601 timestamp: %r' % (text,))
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = float(match.group(7) or 0.0)
    try:
        epoch = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        # timegm accepts 2024-02-31; a round trip rejects it.
        if time.gmtime(epoch)[:6] != (year, month, day, hour, minute, second):
            raise ValueError('out of range')
    except (ValueError, OverflowError):
        raise NoticeError('not a valid date: %r' % (text,))
    zone = match.group(8)
    if zone and zone != 'Z':
        sign = -1 if zone[0] == '+' else 1
        digits = zone[1:].replace(':', '')
        epoch += sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return epoch + fraction


def parse_http_date(text):
    """Parse the RFC 1123 style dates AWS and Azure use ('Mon, 19 Sep 2016 18:29:47 GMT',
    '21 Jan 2019 09:00:43 GMT') into epoch seconds."""
    if not isinstance(text, str):
        raise NoticeError('expected a date, got %r' % (text,))
    value = text.strip()
    for fmt in ('%a, %d %b %Y %H:%M:%S GMT', '%d %b %Y %H:%M:%S GMT', '%a, %d %b %Y %H:%M:%S UTC'):
        try:
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            continue
    raise NoticeError('not an HTTP date: %r' % (text,))


def _stable_id(provider, *parts):
    digest = hashlib.sha256('\x1f'.join([provider] + [str(p) for p in parts]).encode('utf-8')).hexdigest()
    return '%s-%s' % (provider, digest[:16])


def make_notice(provider, kind, instance_id, now, action=None, deadline=None, notice_id=None, raw=None,
                evicting_kinds=DEFAULT_EVICTING_KINDS):
    """Build one normalised notice (the contract in ARCHITECTURE.md).

    ``deadline`` is epoch seconds or None; ``now`` is the epoch time of the check.
    """
    if kind not in KINDS:
        raise ValueError('unknown notice kind %r' % (kind,))
    seconds_left = None
    if deadline is not None:
        seconds_left = round(max(0.0, deadline - now), 3)
    return {
        'evicting': kind != 'none' and kind in evicting_kinds,
        'provider': provider,
        'kind': kind,
        'action': action,
        'deadline': iso_utc(deadline),
        'seconds_left': seconds_left,
        'notice_id': notice_id,
        'instance_id': instance_id,
        'raw': raw if raw is not None else {},
        'checked_at': iso_utc(now),
    }


def quiet_notice(provider, instance_id, now, raw=None):
    """The notice for "the service answered and announced nothing"."""
    return make_notice(provider, 'none', instance_id, now, raw=raw)


def pick_notice(notices, provider, instance_id, now, raw):
    """Return the most urgent of several notices (evicting first, then the earliest deadline),
    with every notice found listed under ``notices``."""
    if not notices:
        chosen = quiet_notice(provider, instance_id, now, raw=raw)
    else:
        def urgency(n):
            rank = 0 if n['evicting'] else _KIND_RANK.get(n['kind'], 5)
            left = n['seconds_left'] if n['seconds_left'] is not None else float('inf')
            return (rank, left, n['notice_id'] or '')
        chosen = dict(sorted(notices, key=urgency)[0])
        chosen['raw'] = raw
    chosen['notices'] = [dict((k, v) for k, v in n.items() if k != 'raw') for n in notices]
    return chosen


def _json(text, what):
    if isinstance(text, bytes):
        try:
            text = text.decode('utf-8')
        except UnicodeDecodeError:
            raise NoticeError('%s is not JSON (not even UTF-8 text): %r' % (what, _preview(text)))
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise NoticeError('%s is not JSON (%s): %r' % (what, exc, _preview(text)))


def _text(body, what):
    if isinstance(body, bytes):
        try:
            body = body.decode('utf-8')
        except UnicodeDecodeError:
            raise NoticeError('%s is not UTF-8 text: %r' % (what, _preview(body)))
    return body.strip()


def _preview(text, limit=120):
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else text[:limit] + '...'


# ---------------------------------------------------------------------------- AWS

def parse_aws(instance_id, instance_action, termination_time, rebalance, maintenance, now,
              evicting_kinds=DEFAULT_EVICTING_KINDS):
    """Normalise AWS IMDS payloads.

    Each payload argument is the response body (str/bytes), or None where IMDS
    answered 404 (nothing announced). ``maintenance`` is the body of
    ``events/maintenance/scheduled`` (a JSON list, ``[]`` when none).
    """
    raw = {}
    notices = []
    if instance_action is not None:
        doc = _json(instance_action, 'spot/instance-action')
        raw['instance_action'] = doc
        if not isinstance(doc, dict) or 'action' not in doc or 'time' not in doc:
            raise NoticeError('spot/instance-action lacks "action" and "time": %r' % (_preview(json.dumps(doc)),))
        action = doc['action']
        if action not in AWS_ACTIONS:
            raise NoticeError('spot/instance-action has unknown action %r (expected one of %s)'
                              % (action, ', '.join(AWS_ACTIONS)))
        deadline = parse_iso8601(doc['time'])
        notices.append(make_notice('aws', 'spot_interruption', instance_id, now, action=action,
                                   deadline=deadline,
                                   notice_id=_stable_id('aws', instance_id, 'spot_interruption', action, doc['time']),
                                   evicting_kinds=evicting_kinds))
    elif termination_time is not None:
        # Older instances publish only the termination time.
        text = _text(termination_time, 'spot/termination-time')
        raw['termination_time'] = text
        deadline = parse_iso8601(text)
        notices.append(make_notice('aws', 'spot_interruption', instance_id, now, action='terminate',
                                   deadline=deadline,
                                   notice_id=_stable_id('aws', instance_id, 'spot_interruption', 'terminate', text),
                                   evicting_kinds=evicting_kinds))
    if rebalance is not None:
        doc = _json(rebalance, 'events/recommendations/rebalance')
        raw['rebalance'] = doc
        if not isinstance(doc, dict) or not isinstance(doc.get('noticeTime'), str):
            raise NoticeError('events/recommendations/rebalance lacks "noticeTime": %r' % (_preview(json.dumps(doc)),))
        parse_iso8601(doc['noticeTime'])
        notices.append(make_notice('aws', 'rebalance', instance_id, now, action='rebalance',
                                   notice_id=_stable_id('aws', instance_id, 'rebalance', doc['noticeTime']),
                                   evicting_kinds=evicting_kinds))
    if maintenance is not None:
        doc = _json(maintenance, 'events/maintenance/scheduled')
        raw['maintenance'] = doc
        if not isinstance(doc, list):
            raise NoticeError('events/maintenance/scheduled is not a list: %r' % (_preview(json.dumps(doc)),))
        for event in doc:
            if not isinstance(event, dict) or not isinstance(event.get('EventId'), str):
                raise NoticeError('events/maintenance/scheduled entry lacks "EventId": %r' % (_preview(json.dumps(event)),))
            if event.get('State', 'active') != 'active':
                continue
            deadline = parse_http_date(event['NotBefore']) if event.get('NotBefore') else None
            notices.append(make_notice('aws', 'maintenance', instance_id, now,
                                       action=str(event.get('Code') or 'maintenance'), deadline=deadline,
                                       notice_id=_stable_id('aws', instance_id, 'maintenance', event['EventId']),
                                       evicting_kinds=evicting_kinds))
    return pick_notice(notices, 'aws', instance_id, now, raw)


# ---------------------------------------------------------------------------- GCP

def parse_gcp(instance_id, preempted, maintenance_event, now, maintenance_etag=None,
              evicting_kinds=DEFAULT_EVICTING_KINDS, boot_id=None):
    """Normalise GCE metadata values: ``instance/preempted`` (TRUE/FALSE) and
    ``instance/maintenance-event`` (NONE, MIGRATE_ON_HOST_MAINTENANCE,
    TERMINATE_ON_HOST_MAINTENANCE; None when not fetched).

    GCE gives a preemption no time and no id of its own, and a spot VM that was stopped can be started again with
    the same instance id and preempted again: ``boot_id`` (the kernel's, read on the node) keeps the second
    preemption from looking like a repeat of the first."""
    raw = {}
    notices = []
    value = _text(preempted, 'instance/preempted')
    raw['preempted'] = value
    if value not in ('TRUE', 'FALSE'):
        raise NoticeError('instance/preempted is %r, expected TRUE or FALSE' % (_preview(value),))
    if value == 'TRUE':
        # GCE publishes no time: the VM gets about 30 s from the moment this turns TRUE.
        notices.append(make_notice('gcp', 'preempt', instance_id, now, action='stop',
                                   notice_id=_stable_id('gcp', instance_id, 'preempt', boot_id or ''),
                                   evicting_kinds=evicting_kinds))
    if maintenance_event is not None:
        event = _text(maintenance_event, 'instance/maintenance-event')
        raw['maintenance_event'] = event
        if event not in GCP_MAINTENANCE_VALUES:
            raise NoticeError('instance/maintenance-event is %r, expected one of %s'
                              % (_preview(event), ', '.join(GCP_MAINTENANCE_VALUES)))
        if event != 'NONE':
            action = 'terminate' if event.startswith('TERMINATE') else 'migrate'
            notices.append(make_notice('gcp', 'maintenance', instance_id, now, action=action,
                                       notice_id=_stable_id('gcp', instance_id, 'maintenance', event,
                                                            maintenance_etag or ''),
                                       evicting_kinds=evicting_kinds))
    return pick_notice(notices, 'gcp', instance_id, now, raw)


# ---------------------------------------------------------------------------- Azure

_AZURE_KIND = {'Preempt': 'preempt', 'Terminate': 'terminate',
               'Freeze': 'maintenance', 'Reboot': 'maintenance', 'Redeploy': 'maintenance'}


def parse_azure(vm_name, document, now, evicting_kinds=DEFAULT_EVICTING_KINDS, instance_id=None):
    """Normalise an Azure Scheduled Events document.

    Only events whose ``Resources`` name this VM (``vm_name``, the compute name)
    count; events for other VMs in the availability set are ignored. A Started
    event has an empty ``NotBefore``: it is happening now.
    """
    doc = _json(document, 'scheduledevents')
    if not isinstance(doc, dict) or 'Events' not in doc or 'DocumentIncarnation' not in doc:
        raise NoticeError('scheduledevents lacks "DocumentIncarnation" and "Events": %r'
                          % (_preview(json.dumps(doc)),))
    if not isinstance(doc['DocumentIncarnation'], int) or isinstance(doc['DocumentIncarnation'], bool):
        raise NoticeError('scheduledevents DocumentIncarnation is not a number: %r' % (doc['DocumentIncarnation'],))
    events = doc['Events']
    if not isinstance(events, list):
        raise NoticeError('scheduledevents "Events" is not a list: %r' % (_preview(json.dumps(events)),))
    notices = []
    for event in events:
        if not isinstance(event, dict):
            raise NoticeError('scheduledevents entry is not an object: %r' % (_preview(json.dumps(event)),))
        for key in ('EventId', 'EventType', 'Resources', 'EventStatus'):
            if key not in event:
                raise NoticeError('scheduledevents entry lacks %r: %r' % (key, _preview(json.dumps(event))))
        resources = event['Resources']
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise NoticeError('scheduledevents entry has bad Resources: %r' % (_preview(json.dumps(event)),))
        if vm_name not in resources:
            continue
        etype = event['EventType']
        if etype not in _AZURE_KIND:
            raise NoticeError('scheduledevents entry has unknown EventType %r (expected one of %s)'
                              % (etype, ', '.join(AZURE_EVENT_TYPES)))
        status = event['EventStatus']
        if status not in AZURE_EVENT_STATUSES:
            raise NoticeError('scheduledevents entry has unknown EventStatus %r' % (status,))
        not_before = event.get('NotBefore') or ''
        if status == 'Started' or not not_before:
            deadline = now
        else:
            deadline = parse_http_date(not_before)
        if not isinstance(event['EventId'], str) or not event['EventId']:
            raise NoticeError('scheduledevents entry has bad EventId: %r' % (event['EventId'],))
        notices.append(make_notice('azure', _AZURE_KIND[etype], instance_id or vm_name, now, action=etype.lower(),
                                   deadline=deadline, notice_id='azure-%s' % event['EventId'],
                                   evicting_kinds=evicting_kinds))
    return pick_notice(notices, 'azure', instance_id or vm_name, now, doc)
