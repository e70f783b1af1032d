# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one HTTP seam for metadata services: no proxies, no redirects, a size cap.

``module_fetch`` is what modules use: ``urllib_fetch`` (plain standard library,
also what the node agent uses) for ``http://`` - every cloud's metadata service -
and ``ansible_fetch`` (built on ``ansible.module_utils.urls``) for ``https://``.
"""

from __future__ import absolute_import, division, print_function

import socket
import threading

from ._metadata import MAX_BODY_BYTES, Response, TransportError, check_notice

__metaclass__ = type


def _read_capped(handle):
    return handle.read(MAX_BODY_BYTES + 1) if handle is not None else b''


def _error_response(exc):
    try:
        body = _read_capped(exc)
    except Exception:  # the body of an error may already be gone
        body = b''
    return Response(exc.code, dict(exc.headers or {}), body)


def bounded(work, timeout):
    """``work(box)`` - one whole HTTP exchange - within ``timeout`` seconds of wall-clock time, whatever the server
    does: a socket timeout bounds each read, not a body dripped one byte at a time, so the exchange runs in a thread
    and is abandoned (its response closed, which ends the read) when time is up. ``work`` puts the open response in
    ``box['handle']``."""
    box = {}

    def run():
        try:
            box['value'] = work(box)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box['error'] = exc

    worker = threading.Thread(target=run, name='http')
    worker.daemon = True
    worker.start()
    worker.join(float(timeout))
    if worker.is_alive():
        _hang_up(box.get('handle'))
        raise TransportError('timed out: no complete answer within %.1f s' % float(timeout))
    if 'error' in box:
        raise box['error']
    return box['value']


def _hang_up(handle):
    """End a read another thread is blocked in: shut the response's socket down (closing the response itself would
    wait for that thread's lock). Best effort - the thread is abandoned either way."""
    sock = getattr(getattr(getattr(handle, 'fp', None), 'raw', None), '_sock', None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except (OSError, socket.error):
            pass


def eviction_info(params, check_mode=False):
    """``eviction_info``'s work, from its checked arguments: the module and its action plugin's lean run call this."""
    return check_notice(module_fetch, params)


def module_fetch(method, url, headers, timeout, data=None):
    """``fetch`` for modules. ansible's ``open_url`` builds an SSL context - loading the system's CA bundle - for every
    request, ``http://`` ones included (about 25 ms each, 0.3 s for one AWS notice check on a busy node, on every
    probe of every sweep); metadata services speak plain HTTP, so those go through the standard library. ``https://``
    (an unusual cloud, a proxying service) keeps ansible's certificate handling."""
    if str(url).lower().startswith('https:'):
        return ansible_fetch(method, url, headers, timeout, data)
    return urllib_fetch(method, url, headers, timeout, data)


def ansible_fetch(method, url, headers, timeout, data=None):
    """``fetch`` built on ansible.module_utils.urls.open_url, the whole exchange within ``timeout`` seconds."""
    return bounded(lambda box: _ansible_fetch(box, method, url, headers, timeout, data), timeout)


def _ansible_fetch(box, method, url, headers, timeout, data):
    from ansible.module_utils.urls import open_url
    from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
    try:
        resp = box['handle'] = open_url(url, data=data, headers=headers, method=method, use_proxy=False,
                                        timeout=timeout, follow_redirects='none', validate_certs=True,
                                        http_agent=headers.get('User-Agent'))
        return Response(resp.getcode(), dict(resp.headers), _read_capped(resp))
    except HTTPError as exc:
        return _error_response(exc)
    except (URLError, socket.timeout, socket.error, ValueError) as exc:
        raise TransportError(_reason(exc))
    except Exception as exc:  # http.client.RemoteDisconnected, BadStatusLine, ...
        raise TransportError('%s: %s' % (type(exc).__name__, exc))


def urllib_fetch(method, url, headers, timeout, data=None):
    """``fetch`` in plain standard library (no proxies, redirects refused), the whole exchange within ``timeout``."""
    return bounded(lambda box: _urllib_fetch(box, method, url, headers, timeout, data), timeout)


def _urllib_fetch(box, method, url, headers, timeout, data):
    import urllib.error
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with opener.open(request, timeout=timeout) as resp:
            box['handle'] = resp
            return Response(resp.status, dict(resp.headers), _read_capped(resp))
    except urllib.error.HTTPError as exc:
        return _error_response(exc)
    except (urllib.error.URLError, socket.timeout, socket.error, ValueError) as exc:
        raise TransportError(_reason(exc))
    except Exception as exc:
        raise TransportError('%s: %s' % (type(exc).__name__, exc))


def _reason(exc):
    reason = getattr(exc, 'reason', None)
    return str(reason if reason is not None else exc) or type(exc).__name__
