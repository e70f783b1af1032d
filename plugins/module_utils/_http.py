# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one HTTP seam for metadata services: no proxies, no redirects, a size cap.

``ansible_fetch`` is what modules use (built on ``ansible.module_utils.urls``);
``urllib_fetch`` is the same contract in plain standard library for code that
runs without Ansible (the node agent).
"""

from __future__ import absolute_import, division, print_function

import socket

from ._metadata import MAX_BODY_BYTES, Response, TransportError

__metaclass__ = type


def _read_capped(handle):
    return handle.read(MAX_BODY_BYTES + 1) if handle is not None else b''


def _error_response(exc):
    try:
        body = _read_capped(exc)
    except Exception:  # the body of an error may already be gone
        body = b''
    return Response(exc.code, dict(exc.headers or {}), body)


def ansible_fetch(method, url, headers, timeout, data=None):
    """``fetch`` built on ansible.module_utils.urls.open_url."""
    from ansible.module_utils.urls import open_url
    from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
    try:
        resp = open_url(url, data=data, headers=headers, method=method, use_proxy=False, timeout=timeout,
                        follow_redirects='none', validate_certs=True, http_agent=headers.get('User-Agent'))
        return Response(resp.getcode(), dict(resp.headers), _read_capped(resp))
    except HTTPError as exc:
        return _error_response(exc)
    except (URLError, socket.timeout, socket.error, ValueError) as exc:
        raise TransportError(_reason(exc))
    except Exception as exc:  # http.client.RemoteDisconnected, BadStatusLine, ...
        raise TransportError('%s: %s' % (type(exc).__name__, exc))


def urllib_fetch(method, url, headers, timeout, data=None):
    """``fetch`` in plain standard library (no proxies, redirects refused)."""
    import urllib.error
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with opener.open(request, timeout=timeout) as resp:
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
