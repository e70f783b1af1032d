# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where should a workload go? Rank candidate hosts by GPU capacity and policy, and hold reservations so
two migrations running at once never take the same GPUs. Plain values in and out, no Ansible imports:
the ``pick_target`` filter, the ``target_reservation`` module and the watcher share it."""

from __future__ import absolute_import, division, print_function

import errno
import fcntl
import json
import os
import time

from ._common import write_json_atomic

__metaclass__ = type


class PlacementError(Exception):
    def __init__(self, message, **details):
        super(PlacementError, self).__init__(message)
        self.details = details


def rank_candidates(candidates, gpus=1, min_free_memory_mb=0, exclude=(), reservations=None):
    """Rank hosts for a workload needing ``gpus`` GPUs with ``min_free_memory_mb`` free each.

    ``candidates``: list of dicts with ``host``, ``free_gpus`` (indices), ``gpus`` (gpu_info's list),
    ``lifecycle`` (``on-demand``/``standby`` or ``spot``), ``evicting`` (bool), ``blind`` (bool), ``at_risk``
    (bool: the node has an early warning - a rebalance recommendation, a maintenance event - so it is taken last).
    ``reservations``: {host: [gpu indices held by other migrations]}.

    Returns ``(ranked, rejected)``: ranked dicts (best first) with ``host``, ``gpus`` (the indices to use),
    ``lifecycle``, ``at_risk``, ``free_memory_mb``; rejected dicts with ``host`` and ``reason``. Ties are broken by
    host name, so the same inputs always give the same answer.
    """
    reservations = reservations or {}
    gpus = int(gpus or 0)
    ranked, rejected = [], []
    for cand in candidates:
        host = cand.get('host')
        if host in exclude:
            rejected.append({'host': host, 'reason': 'excluded (the source, or asked to skip it)'})
            continue
        if cand.get('blind'):
            rejected.append({'host': host, 'reason': 'blind: %s' % (cand.get('error') or 'its probe failed')})
            continue
        if cand.get('evicting'):
            rejected.append({'host': host, 'reason': 'has an eviction notice of its own'})
            continue
        held = set(int(g) for g in reservations.get(host, []))
        by_index = dict((g.get('index'), g) for g in cand.get('gpus') or [])
        usable = []
        for index in cand.get('free_gpus') or []:
            if index in held:
                continue
            free_mb = (by_index.get(index) or {}).get('memory_free_mb')
            if min_free_memory_mb and (free_mb is None or free_mb < min_free_memory_mb):
                continue
            usable.append(index)
        if len(usable) < gpus:
            rejected.append({'host': host, 'reason': '%d usable free GPU(s), %d needed (%d reserved by other migrations)'
                             % (len(usable), gpus, len(held))})
            continue
        chosen = sorted(usable)[:gpus]
        free_memory = sum((by_index.get(i) or {}).get('memory_free_mb') or 0 for i in usable)
        lifecycle = cand.get('lifecycle') or 'spot'
        ranked.append({'host': host, 'gpus': chosen, 'lifecycle': lifecycle, 'free_memory_mb': free_memory,
                       'free_gpus': len(usable), 'at_risk': bool(cand.get('at_risk'))})
    # On-demand / standby first (they are not taken away), nodes at risk last of their kind, then most free memory,
    # then the name.
    ranked.sort(key=lambda r: (0 if r['lifecycle'] in ('on-demand', 'standby') else 1, r['at_risk'],
                               -r['free_memory_mb'], r['host']))
    return ranked, rejected


class ReservationBook:
    """Reservations in one JSON file on the controller, changed only under an exclusive lock."""

    def __init__(self, path, clock=time.time):
        self.path = path
        self.clock = clock
        self._fd = None

    def __enter__(self):
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            try:
                os.makedirs(directory, 0o700)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
        self._fd = os.open(self.path + '.lock', os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def load(self):
        try:
            with open(self.path) as handle:
                data = json.load(handle)
        except (IOError, OSError):
            return {}
        except ValueError as exc:
            raise PlacementError('reservation file %s is not JSON (%s); move it aside' % (self.path, exc))
        now = self.clock()
        return dict((k, v) for k, v in data.items() if v.get('expires', 0) > now)

    def save(self, entries):
        write_json_atomic(self.path, entries)

    @staticmethod
    def held(entries, ignore_owner=None):
        """{host: [gpu indices]} held by owners other than ``ignore_owner``."""
        held = {}
        for owner, entry in entries.items():
            if owner == ignore_owner:
                continue
            held.setdefault(entry['host'], []).extend(entry['gpus'])
        return held


def reserve(path, owner, candidates, gpus=1, min_free_memory_mb=0, exclude=(), ttl=900, target=None,
            check_mode=False, clock=time.time, adopt=None):
    """Choose a target (or check the one given) and reserve its GPUs for ``owner``, atomically.

    Re-running with the same owner returns the same reservation unchanged. ``adopt`` names another owner whose
    reservation (a pre-reserved next target) is taken over when its host still qualifies; otherwise it is left as it
    is and a target is chosen as usual."""
    with ReservationBook(path, clock) as book:
        entries = book.load()
        mine = entries.get(owner)
        ranked, rejected = rank_candidates(candidates, gpus, min_free_memory_mb, exclude,
                                           book.held(entries, ignore_owner=owner))
        if mine and target in (None, mine['host']):
            return {'changed': False, 'target': mine['host'], 'gpus': mine['gpus'], 'ranked': ranked,
                    'rejected': rejected, 'expires': mine['expires']}
        held = entries.get(adopt) if adopt else None
        if held and target in (None, held['host']) and held['host'] not in exclude:
            others = book.held(dict((k, v) for k, v in entries.items() if k != adopt), ignore_owner=owner)
            fits = [r for r in rank_candidates(candidates, gpus, min_free_memory_mb, exclude, others)[0]
                    if r['host'] == held['host']]
            if fits:
                usable = set(int(g) for g in next((c.get('free_gpus') or [] for c in candidates
                                                   if c.get('host') == held['host']), []))
                chosen = held['gpus'] if set(held['gpus']) <= usable and len(held['gpus']) == int(gpus) else fits[0]['gpus']
                entry = {'host': held['host'], 'gpus': chosen, 'expires': clock() + ttl, 'created': clock(),
                         'adopted_from': adopt}
                if not check_mode:
                    entries[owner] = entry
                    del entries[adopt]
                    book.save(entries)
                return {'changed': True, 'target': held['host'], 'gpus': chosen, 'ranked': ranked,
                        'rejected': rejected, 'expires': entry['expires'], 'adopted': adopt}
        if target is not None:
            ranked = [r for r in ranked if r['host'] == target]
            if not ranked:
                why = [r['reason'] for r in rejected if r['host'] == target] or ['not among the candidates']
                raise PlacementError('target %s cannot take the workload: %s' % (target, why[0]),
                                     rejected=rejected)
        if not ranked:
            raise PlacementError('no target has capacity for %d GPU(s)%s: %s'
                                 % (gpus, ' with %d MiB free each' % min_free_memory_mb if min_free_memory_mb else '',
                                    '; '.join('%s: %s' % (r['host'], r['reason']) for r in rejected) or 'no candidates'),
                                 rejected=rejected, ranked=[])
        best = ranked[0]
        entry = {'host': best['host'], 'gpus': best['gpus'], 'expires': clock() + ttl, 'created': clock()}
        if not check_mode:
            entries[owner] = entry
            book.save(entries)
        return {'changed': True, 'target': best['host'], 'gpus': best['gpus'], 'ranked': ranked, 'rejected': rejected,
                'expires': entry['expires']}


def renew(path, owner, ttl=900, clock=time.time):
    """Extend ``owner``'s reservation by ``ttl`` seconds from now. Returns the entry, or None when it has expired or
    never existed (then it must be made again)."""
    with ReservationBook(path, clock) as book:
        entries = book.load()
        entry = entries.get(owner)
        if entry is None:
            return None
        entry['expires'] = clock() + ttl
        book.save(entries)
        return entry


def release(path, owner, check_mode=False):
    with ReservationBook(path) as book:
        entries = book.load()
        if owner not in entries:
            return {'changed': False}
        if not check_mode:
            del entries[owner]
            book.save(entries)
        return {'changed': True}


def image_key(ref):
    """One container image reference as podman and docker resolve it locally: C(x), C(x:latest),
    C(localhost/x:latest) and C(docker.io/library/x:latest) are one image (C(x:latest)); a digest is itself."""
    ref = (ref or '').strip()
    if not ref or '@' in ref:
        return ref
    name, tag = ref, 'latest'
    if ':' in ref.rsplit('/', 1)[-1]:
        name, tag = ref.rsplit(':', 1)
    for prefix in ('localhost/', 'docker.io/library/', 'index.docker.io/library/', 'docker.io/'):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return '%s:%s' % (name, tag)


def has_image(candidate, image):
    """Whether ``candidate`` (migration_target describe's C(images): the images it holds, None when it could not
    tell) can start a workload of ``image`` without pulling it: unknown counts as yes, the target's start says."""
    held = candidate.get('images')
    if not image or held is None:
        return True
    wanted = image_key(image)
    return any(image_key(h) == wanted for h in held)


def reserve_many(path, requests, candidates, min_free_memory_mb=0, ttl=900, check_mode=False, clock=time.time):
    """One joint reservation for a wave of workloads: each request (``owner``, ``gpus``, ``exclude``, ``target``,
    ``adopt``, ``image``, ``apart``: requests with the same value never share a host) reserved in turn, each under
    the lock and seeing the ones before it, so no GPU is promised twice. A container workload (``image``) goes only
    where its image already is, so its source copy is never stopped for a target that cannot start it. A request that
    cannot be met is returned with its ``error`` and does not stop the others."""
    results = []
    apart = {}  # requests that must not share a host (a gang's members): the hosts the earlier ones took
    for request in requests:
        owner = request.get('owner')
        if not owner:
            raise PlacementError('reservation request %r has no owner' % (request,))
        image = request.get('image')
        usable = [c for c in candidates if has_image(c, image)]
        no_image = [{'host': c.get('host'), 'reason': 'the container image %s is not on it' % image}
                    for c in candidates if not has_image(c, image)]
        try:
            if request.get('release_first'):
                release(path, owner, check_mode)
            if no_image and not usable:
                raise PlacementError('no candidate holds the container image %s (%s): pull it onto a target first; '
                                     'the workload keeps running where it is'
                                     % (image, ', '.join(r['host'] for r in no_image)))
            taken = tuple(apart.get(request.get('apart'), ())) if request.get('apart') else ()
            done = reserve(path, owner, usable, int(request.get('gpus') or 0), min_free_memory_mb,
                           tuple(request.get('exclude') or ()) + taken, ttl, request.get('target') or None, check_mode, clock,
                           adopt=request.get('adopt') or None)
            done['error'] = None
        except PlacementError as exc:
            done = {'changed': False, 'target': None, 'gpus': [], 'ranked': exc.details.get('ranked', []),
                    'rejected': list(exc.details.get('rejected', [])), 'error': str(exc)}
        done['rejected'] = list(done.get('rejected') or []) + no_image
        done['owner'] = owner
        done['name'] = request.get('name')
        done['source'] = request.get('source')
        done['reserved_at'] = clock()
        if request.get('apart') and done.get('target'):
            apart.setdefault(request['apart'], []).append(done['target'])
        results.append(done)
    return results


# target_reservation's options: the module and its action plugin (which runs this in-process on the controller).
MODULE_SPEC = {
    'argument_spec': dict(
        path=dict(type='path', required=True),
        owner=dict(type='str'),
        requests=dict(type='list', elements='dict'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        candidates=dict(type='list', elements='dict', default=[]),
        gpus=dict(type='int', default=1),
        min_free_memory_mb=dict(type='int', default=0),
        exclude=dict(type='list', elements='str', default=[]),
        target=dict(type='str'),
        ttl=dict(type='float', default=900.0),
        adopt=dict(type='str'),
    ),
    'required_one_of': [('owner', 'requests')],
    'mutually_exclusive': [('owner', 'requests')],
}


def run_reservation(p, check_mode):
    """target_reservation: reserve for one owner or for many requests at once (one joint reservation), or release."""
    if p['requests'] is not None and p['state'] == 'absent':
        done = [release(p['path'], r.get('owner'), check_mode) for r in p['requests'] if r.get('owner')]
        return {'changed': any(d['changed'] for d in done), 'rejected': [], 'reservations': []}
    if p['requests'] is not None:
        reservations = reserve_many(p['path'], p['requests'], p['candidates'], p['min_free_memory_mb'], p['ttl'],
                                    check_mode)
        return {'changed': any(r['changed'] for r in reservations), 'reservations': reservations,
                'rejected': [x for r in reservations for x in r['rejected']]}
    if p['state'] == 'absent':
        result = release(p['path'], p['owner'], check_mode)
        result['rejected'] = []
        return result
    return reserve(p['path'], p['owner'], p['candidates'], p['gpus'], p['min_free_memory_mb'], p['exclude'],
                   p['ttl'], p['target'], check_mode, adopt=p['adopt'])
