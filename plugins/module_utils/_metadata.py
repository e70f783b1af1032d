# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Talk to the clouds' instance metadata services and return normalised notices.

No Ansible imports: every HTTP request goes through one ``fetch`` callable
passed in by the caller (the module builds it on ``ansible.module_utils.urls``,
the node agent on ``urllib``), so tests and the agent replace that one seam.

``fetch(method, url, headers, timeout, data=None)`` returns a :class:`Response`
for any HTTP status (redirects included, never followed) and raises
:class:`TransportError` when no HTTP answer came back. It reads at most
``MAX_BODY_BYTES + 1`` bytes so an oversized body is detected, not swallowed.
"""

from __future__ import absolute_import, division, print_function

import json
import math
import os
import time

try:
    from urllib.parse import urlencode
except ImportError:  # pragma: no cover - Python 2 is not supported on nodes
    from urllib import urlencode

from ._notice import (DEFAULT_EVICTING_KINDS, NoticeError, PROVIDERS, make_notice, parse_aws, parse_azure, parse_gcp)

__metaclass__ = type

MAX_BODY_BYTES = 64 * 1024
DEFAULT_URLS = {
    'aws': 'http://169.254.169.254',
    'gcp': 'http://metadata.google.internal',
    'azure': 'http://169.254.169.254',
}
AWS_TOKEN_TTL = 21600
AZURE_API_VERSION = '2021-02-01'
AZURE_EVENTS_API_VERSION = '2020-07-01'
USER_AGENT = 'spot.migration'
DMI_DIR = '/sys/class/dmi/id'
BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id'
BOOT_ID_ENV = 'SPOT_BOOT_ID_FILE'  # the local fleet gives each simulated node a boot of its own


def read_boot_id():
    """This boot's id (changes when the VM is stopped and started again), or None where it cannot be read."""
    try:
        with open(os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE) as handle:
            return handle.read().strip() or None
    except (IOError, OSError):
        return None


class TransportError(NoticeError):
    """No HTTP answer: connection refused, reset, timed out, DNS failure."""


class Response:
    """What came back from one HTTP request."""

    def __init__(self, status, headers, body, truncated=False):
        self.status = int(status)
        self.headers = dict((str(k).lower(), str(v)) for k, v in (headers or {}).items())
        self.body = body if isinstance(body, bytes) else (body or '').encode('utf-8')
        self.truncated = truncated or len(self.body) > MAX_BODY_BYTES

    def text(self):
        return self.body.decode('utf-8', 'replace')


def _describe(resp):
    body = resp.text().strip().replace('\n', ' ')
    if len(body) > 200:
        body = body[:200] + '...'
    return 'HTTP %d %s' % (resp.status, repr(body) if body else '(empty body)')


class MetadataProbe:
    """Base class: request with retries inside one overall timeout, then parse.

    ``timeout`` bounds one whole probe (all its requests and retries); 5xx answers
    and dropped connections are retried until it runs out, then reported.
    """

    provider = None
    poll_interval = 1.0

    def __init__(self, fetch, base_url=None, timeout=5.0, evicting_kinds=DEFAULT_EVICTING_KINDS,
                 clock=time.time, monotonic=time.monotonic, sleep=time.sleep):
        self.fetch = fetch
        self.base_url = (base_url or DEFAULT_URLS[self.provider]).rstrip('/')
        self.timeout = float(timeout)
        self.evicting_kinds = tuple(evicting_kinds)
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.instance_id = None
        self.requests = 0
        self.retries = 0

    def headers(self):
        return {'User-Agent': USER_AGENT}

    def request(self, method, path, deadline, headers=None, data=None, ok=(200,), missing=(404,)):
        """One logical request. Returns the Response for a status in ``ok``, None for
        one in ``missing``; raises NoticeError for anything else, naming the URL."""
        url = self.base_url + path
        all_headers = self.headers()
        all_headers.update(headers or {})
        backoff = 0.1
        last = None
        while True:
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                raise NoticeError('%s %s: no usable answer within %.1f s (last: %s)'
                                  % (method, url, self.timeout, last or 'nothing'))
            self.requests += 1
            try:
                resp = self.fetch(method, url, all_headers, max(0.05, remaining), data)
            except TransportError as exc:
                last = str(exc)
                if self.monotonic() + backoff >= deadline:
                    raise NoticeError('%s %s: metadata service unreachable: %s' % (method, url, exc))
                self.retries += 1
                self.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if resp.truncated:
                raise NoticeError('%s %s: response body larger than %d bytes refused'
                                  % (method, url, MAX_BODY_BYTES))
            if resp.status in ok:
                return resp
            if resp.status in missing:
                return None
            if 300 <= resp.status < 400:
                raise NoticeError('%s %s: redirect to %r refused (metadata services never redirect)'
                                  % (method, url, resp.headers.get('location', '?')))
            if resp.status >= 500:
                last = _describe(resp)
                if self.monotonic() + backoff >= deadline:
                    raise NoticeError('%s %s: %s, still failing after %d retries'
                                      % (method, url, last, self.retries))
                self.retries += 1
                self.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            raise NoticeError('%s %s: %s' % (method, url, _describe(resp)))

    def probe(self):
        """Return the current normalised notice."""
        deadline = self.monotonic() + self.timeout
        try:
            return self._probe(deadline)
        except NoticeError as exc:
            if self.base_url in str(exc):
                raise
            # A payload the parser refused: say which service sent it.
            raise NoticeError('%s (from the %s metadata service at %s)' % (exc, self.provider, self.base_url))

    def _probe(self, deadline):
        raise NotImplementedError

    def wait_step(self, remaining):
        """Block until something may have changed (at most ``remaining`` seconds)."""
        self.sleep(max(0.0, min(self.poll_interval, remaining)))

    def wait(self, seconds):
        """Probe until an evicting notice appears or ``seconds`` pass; the result
        carries ``waited`` (seconds spent)."""
        start = self.monotonic()
        end = start + max(0.0, float(seconds))
        notice = self.probe()
        while not notice['evicting'] and self.monotonic() < end:
            self.wait_step(end - self.monotonic())
            notice = self.probe()
        notice['waited'] = round(self.monotonic() - start, 3)
        return notice


class AwsProbe(MetadataProbe):
    """EC2 IMDS. ``imds_version``: ``v2`` requires a session token, ``v1`` never asks
    for one, ``auto`` asks and falls back to v1 where IMDS refuses to issue tokens.
    The token stays inside this object: it is never returned or logged."""

    provider = 'aws'

    def __init__(self, fetch, base_url=None, imds_version='auto', **kwargs):
        super(AwsProbe, self).__init__(fetch, base_url, **kwargs)
        if imds_version not in ('auto', 'v1', 'v2'):
            raise NoticeError('imds_version must be auto, v1 or v2, not %r' % (imds_version,))
        self.imds_version = imds_version
        self._token = None
        self._token_expires = 0.0
        self.version_used = None

    def headers(self):
        headers = super(AwsProbe, self).headers()
        if self._token:
            headers['X-aws-ec2-metadata-token'] = self._token
        return headers

    def _ensure_token(self, deadline):
        if self.imds_version == 'v1':
            self.version_used = 'v1'
            return
        if self._token and self.monotonic() < self._token_expires:
            return
        self._token = None
        resp = self.request('PUT', '/latest/api/token', deadline,
                            headers={'X-aws-ec2-metadata-token-ttl-seconds': str(AWS_TOKEN_TTL)},
                            ok=(200,), missing=(403, 404, 405))
        if resp is None:
            if self.imds_version == 'v2':
                raise NoticeError('PUT %s/latest/api/token: IMDS refused to issue a session token '
                                  '(imds_version=v2 requires one)' % self.base_url)
            self.version_used = 'v1'
            return
        token = resp.text().strip()
        if not token or len(token) > 4096 or any(c.isspace() for c in token):
            raise NoticeError('PUT %s/latest/api/token: answer is not a token' % self.base_url)
        self._token = token
        # Renew well before expiry.
        self._token_expires = self.monotonic() + AWS_TOKEN_TTL / 2
        self.version_used = 'v2'

    def _get(self, path, deadline, missing=(404,)):
        resp = self.request('GET', '/latest/meta-data/' + path, deadline, missing=missing)
        return None if resp is None else resp.body

    def _probe(self, deadline):
        self._ensure_token(deadline)
        try:
            return self._read(deadline)
        except NoticeError as exc:
            # An expired or revoked token gives 401: renew once and read again.
            if self._token and 'HTTP 401' in str(exc):
                self._token = None
                self._ensure_token(deadline)
                return self._read(deadline)
            raise

    def _read(self, deadline):
        if self.instance_id is None:
            body = self._get('instance-id', deadline, missing=())
            self.instance_id = body.decode('utf-8', 'replace').strip()
        action = self._get('spot/instance-action', deadline)
        termination = None if action is not None else self._get('spot/termination-time', deadline)
        rebalance = self._get('events/recommendations/rebalance', deadline)
        maintenance = self._get('events/maintenance/scheduled', deadline)
        return parse_aws(self.instance_id, action, termination, rebalance, maintenance, self.clock(),
                         evicting_kinds=self.evicting_kinds)


class GcpProbe(MetadataProbe):
    """GCE metadata server: ``Metadata-Flavor: Google`` both ways; waits with
    hanging GETs (``wait_for_change`` + ``last_etag``) instead of polling."""

    provider = 'gcp'
    max_hang = 60

    def __init__(self, fetch, base_url=None, **kwargs):
        super(GcpProbe, self).__init__(fetch, base_url, **kwargs)
        self._preempted_etag = None

    def headers(self):
        headers = super(GcpProbe, self).headers()
        headers['Metadata-Flavor'] = 'Google'
        return headers

    def _get(self, path, deadline, timeout_extra=0.0, missing=()):
        resp = self.request('GET', '/computeMetadata/v1/instance/' + path, deadline + timeout_extra, missing=missing)
        if resp is not None and resp.headers.get('metadata-flavor') != 'Google':
            raise NoticeError('GET %s/computeMetadata/v1/instance/%s: answer lacks "Metadata-Flavor: Google"; '
                              'this is not a GCE metadata server' % (self.base_url, path.split('?')[0]))
        return resp

    def _probe(self, deadline):
        if self.instance_id is None:
            self.instance_id = self._get('id', deadline).text().strip()
        preempted = self._get('preempted', deadline)
        self._preempted_etag = preempted.headers.get('etag')
        maintenance = self._get('maintenance-event', deadline, missing=(404,))
        return parse_gcp(self.instance_id, preempted.body, None if maintenance is None else maintenance.body,
                         self.clock(), maintenance_etag=None if maintenance is None else maintenance.headers.get('etag'),
                         evicting_kinds=self.evicting_kinds, boot_id=read_boot_id())

    def wait_step(self, remaining):
        if 'maintenance' in self.evicting_kinds or not self._preempted_etag:
            # A hanging GET watches one key; maintenance needs polling as well.
            return super(GcpProbe, self).wait_step(remaining)
        hang = int(max(1, min(self.max_hang, math.floor(remaining))))
        query = urlencode({'wait_for_change': 'true', 'last_etag': self._preempted_etag, 'timeout_sec': hang})
        self._get('preempted?' + query, self.monotonic() + hang, timeout_extra=self.timeout)


class AzureProbe(MetadataProbe):
    """Azure IMDS Scheduled Events. Only events naming this VM count."""

    provider = 'azure'

    def __init__(self, fetch, base_url=None, **kwargs):
        super(AzureProbe, self).__init__(fetch, base_url, **kwargs)
        self.vm_name = None

    def headers(self):
        headers = super(AzureProbe, self).headers()
        headers['Metadata'] = 'true'
        return headers

    def _json(self, resp, what):
        try:
            return json.loads(resp.text())
        except ValueError:
            raise NoticeError('GET %s%s: answer is not JSON: %s' % (self.base_url, what, _describe(resp)))

    def _probe(self, deadline):
        if self.vm_name is None:
            path = '/metadata/instance/compute?api-version=%s' % AZURE_API_VERSION
            compute = self._json(self.request('GET', path, deadline), path)
            if not isinstance(compute, dict) or not isinstance(compute.get('name'), str) or not compute['name']:
                raise NoticeError('GET %s%s: answer has no compute "name"' % (self.base_url, path))
            self.vm_name = compute['name']
            self.instance_id = compute.get('vmId') or compute['name']
        path = '/metadata/scheduledevents?api-version=%s' % AZURE_EVENTS_API_VERSION
        resp = self.request('GET', path, deadline)
        return parse_azure(self.vm_name, resp.body, self.clock(), evicting_kinds=self.evicting_kinds,
                           instance_id=self.instance_id)

    def acknowledge(self, event_ids):
        """Approve events early (POST StartRequests), as a workload does once it has checkpointed."""
        deadline = self.monotonic() + self.timeout
        body = json.dumps({'StartRequests': [{'EventId': e} for e in event_ids]}).encode('utf-8')
        path = '/metadata/scheduledevents?api-version=%s' % AZURE_EVENTS_API_VERSION
        self.request('POST', path, deadline, headers={'Content-Type': 'application/json'}, data=body)


PROBES = {'aws': AwsProbe, 'gcp': GcpProbe, 'azure': AzureProbe}


def read_dmi(dmi_dir=DMI_DIR):
    """Return the provider the DMI/SMBIOS strings name, or None."""
    values = []
    for name in ('sys_vendor', 'bios_vendor', 'product_name', 'chassis_asset_tag', 'board_vendor'):
        try:
            with open(os.path.join(dmi_dir, name)) as handle:
                values.append(handle.read().strip())
        except (IOError, OSError):
            continue
    joined = ' | '.join(values)
    if 'Amazon EC2' in joined:
        return 'aws'
    if 'Google' in joined:
        return 'gcp'
    # Azure VMs carry this fixed chassis asset tag.
    if '7783-7084-3265-9085-8269-3286-77' in joined:
        return 'azure'
    return None


def detect_provider(fetch, base_url=None, timeout=1.0, dmi_dir=DMI_DIR, monotonic=time.monotonic):
    """``provider: auto``. With no ``base_url`` the DMI vendor strings decide first; then one
    quick request per dialect, each of which only that cloud answers correctly."""
    if base_url is None:
        found = read_dmi(dmi_dir)
        if found:
            return found
    tried = []
    checks = (
        ('gcp', 'GET', '/computeMetadata/v1/', {'Metadata-Flavor': 'Google'},
         lambda r: r.status == 200 and r.headers.get('metadata-flavor') == 'Google'),
        ('azure', 'GET', '/metadata/instance/compute?api-version=%s' % AZURE_API_VERSION, {'Metadata': 'true'},
         lambda r: r.status == 200 and r.body.lstrip()[:1] == b'{'),
        ('aws', 'PUT', '/latest/api/token', {'X-aws-ec2-metadata-token-ttl-seconds': '60'},
         lambda r: r.status in (200, 403, 405)),
        ('aws', 'GET', '/latest/meta-data/instance-id', {}, lambda r: r.status in (200, 401)),
    )
    for provider, method, path, headers, accept in checks:
        url = (base_url or DEFAULT_URLS[provider]).rstrip('/') + path
        headers = dict(headers, **{'User-Agent': USER_AGENT})
        try:
            resp = fetch(method, url, headers, timeout, None)
        except TransportError as exc:
            tried.append('%s %s: %s' % (method, url, exc))
            continue
        if accept(resp):
            return provider
        tried.append('%s %s: %s' % (method, url, _describe(resp)))
    raise NoticeError('could not tell which cloud this is (provider=auto): no DMI vendor string and no '
                      'metadata service answered as AWS, GCP or Azure. Tried: %s. Set provider explicitly.'
                      % '; '.join(tried))


def make_probe(fetch, provider='auto', metadata_url=None, timeout=5.0, imds_version='auto',
               evicting_kinds=DEFAULT_EVICTING_KINDS, dmi_dir=DMI_DIR, **kwargs):
    """The one factory: pick (or detect) the provider and build its probe."""
    if provider == 'auto':
        provider = detect_provider(fetch, metadata_url, timeout=min(1.0, float(timeout)), dmi_dir=dmi_dir)
    if provider not in PROBES:
        raise NoticeError('provider must be auto or one of %s, not %r' % (', '.join(PROVIDERS), provider))
    extra = dict(kwargs)
    if provider == 'aws':
        extra['imds_version'] = imds_version
    return PROBES[provider](fetch, metadata_url, timeout=timeout, evicting_kinds=evicting_kinds, **extra)


# eviction_info's arguments: the module checks them on the node, its action plugin on the controller.
EVICTION_INFO_SPEC = dict(
    argument_spec=dict(
        provider=dict(type='str', default='auto', choices=['auto', 'aws', 'gcp', 'azure']),
        metadata_url=dict(type='str'),
        timeout=dict(type='float', default=5.0),
        imds_version=dict(type='str', default='auto', choices=['auto', 'v2', 'v1']),
        wait=dict(type='float', default=0.0),
        poll_interval=dict(type='float', default=1.0),
        fail_on_error=dict(type='bool', default=True),
        evicting_kinds=dict(type='list', elements='str', default=list(DEFAULT_EVICTING_KINDS),
                            choices=['spot_interruption', 'preempt', 'terminate', 'rebalance', 'maintenance']),
    ),
)


def check_notice(fetch, params, monotonic=time.monotonic):
    """Run one ``eviction_info`` check from module-style parameters.

    Returns the notice dict. Raises NoticeError for any failure unless
    ``fail_on_error`` is false, in which case the result is ``evicting: false``
    with ``error`` set (never a silent "no notice").
    """
    start = monotonic()
    provider = params.get('provider') or 'auto'
    try:
        probe = make_probe(fetch, provider, params.get('metadata_url'), timeout=params.get('timeout', 5.0),
                           imds_version=params.get('imds_version') or 'auto',
                           evicting_kinds=params.get('evicting_kinds') or DEFAULT_EVICTING_KINDS,
                           dmi_dir=params.get('dmi_dir') or DMI_DIR)
        if params.get('poll_interval'):
            probe.poll_interval = float(params['poll_interval'])
        wait = float(params.get('wait') or 0)
        notice = probe.wait(wait) if wait > 0 else probe.probe()
        notice['error'] = None
    except NoticeError as exc:
        if params.get('fail_on_error', True):
            raise
        # Blind, never "quiet": the same shape as a notice, with the error saying why.
        notice = make_notice(provider if provider != 'auto' else 'none', 'none', None, time.time())
        notice.update(notices=[], error=str(exc))
    notice['elapsed'] = round(monotonic() - start, 3)
    return notice
