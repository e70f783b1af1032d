# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The eviction agent: one small process per spot node (role ``spot.migration.eviction_agent``).

It probes the metadata service every second (GCP: a hanging GET) with the same probes as
``eviction_info`` and, on a new notice, (1) asks the node's workloads to checkpoint at once,
(2) writes the notice to its state file, (3) pushes it to the watcher, HMAC-signed, retrying with
backoff until the watcher acknowledges it. Heartbeats say whether the node can see its metadata
service (quiet) or not (blind). Probe errors never crash it and never become "no notice".

Standard library only; the role copies this file and its siblings onto the node as a package.
"""

from __future__ import absolute_import, division, print_function

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from ._common import LOG_FORMATS, Warning_, log_line, write_json_atomic
from ._follow import Follower
from ._http import urllib_fetch
from ._metadata import make_probe
from ._notice import DEFAULT_EVICTING_KINDS, NoticeError, iso_utc
from ._signing import NONCE_HEADER, SignatureError, load_secret, sign, verify
from ._workload import WorkloadError, create_driver, ensure_fenced, request_checkpoint
from ._workload import run_argv as _run

__metaclass__ = type

VERSION = '1.1.0'
CAPABILITIES = ['replicate']
DEFAULTS = {
    'node': None, 'provider': 'auto', 'metadata_url': None, 'imds_version': 'auto', 'watcher_url': None,
    'secret_file': None, 'state_dir': None, 'workload_root': None, 'runtimes': ['process', 'podman', 'docker'],
    'container_cli': None, 'poll_interval': 1.0, 'heartbeat_interval': 5.0, 'probe_timeout': 3.0,
    'evicting_kinds': list(DEFAULT_EVICTING_KINDS), 'signal_workloads': True, 'push_timeout': 5.0,
    'max_backoff': 5.0, 'min_loop_interval': 0.2, 'gcp_max_hang': 10, 'replicate_poll': 0.5, 'replicate_timeout': 3600.0,
    'log_format': 'text',
}


class AgentError(Exception):
    """The agent cannot run as configured; the message names the setting at fault."""


def load_config(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (IOError, OSError) as exc:
        raise AgentError('cannot read agent config %s: %s' % (path, exc))
    except ValueError as exc:
        raise AgentError('agent config %s is not JSON: %s' % (path, exc))
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise AgentError('agent config %s has unknown settings: %s' % (path, ', '.join(unknown)))
    config = dict(DEFAULTS)
    config.update(data)
    for key in ('node', 'watcher_url', 'secret_file', 'state_dir'):
        if not config.get(key):
            raise AgentError('agent config %s: %s is required' % (path, key))
    if config['log_format'] not in LOG_FORMATS:
        raise AgentError('agent config %s: log_format is %r; it must be text or json' % (path, config['log_format']))
    return config


def hold_state_dir(state_dir):
    """Hold ``state_dir`` for this process (a lock on ``agent.lock`` in it, released when the process ends or the
    returned descriptor is closed). Two agents on one state directory - several nodes of one machine left on the
    default - would overwrite each other's notices and pid file: the second is refused, naming the holder."""
    path = os.path.join(state_dir, 'agent.lock')
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (IOError, OSError) as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            os.close(fd)
            raise
        holder = os.read(fd, 64).decode(errors='replace').strip() or 'another process'
        os.close(fd)
        raise AgentError('state directory %s is held by another agent (pid %s): give each node its own '
                         'spot_state_dir' % (state_dir, holder))
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Agent:
    """One node's agent. ``fetch`` is the HTTP seam (metadata service and watcher alike)."""

    def __init__(self, config, fetch=urllib_fetch, log=None, clock=time.time, sleep=time.sleep):
        self.config = config
        self.fetch = fetch
        self.clock = clock
        self.sleep = sleep
        log_format = config.get('log_format', 'text')
        self.log = log or (lambda msg: sys.stderr.write(log_line(clock(), msg, log_format) + '\n') or sys.stderr.flush())
        with open(config['secret_file']) as handle:
            self.secret = load_secret(handle.read(), 'secret file %s' % config['secret_file'])
        self.state_path = os.path.join(config['state_dir'], 'state.json')
        self.state = self._load_state()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.blind_since = None
        self.blind_error = None
        self.last_ok = None
        self.heartbeat_due = 0.0
        self.probe = None
        # Continuous replication: what to copy where comes from the watcher's signed acknowledgements.
        self.follower = Follower(self.log, poll=float(config['replicate_poll']), clock=clock,
                                 timeout=float(config['replicate_timeout']), notify=self._heartbeat_now)

    # ------------------------------------------------------------------ state file
    def _load_state(self):
        try:
            with open(self.state_path) as handle:
                state = json.load(handle)
        except (IOError, OSError, ValueError):
            state = {}
        state.setdefault('notices', {})
        state.setdefault('pending', [])
        return state

    def _save_state(self):
        with self.lock:
            snapshot = json.loads(json.dumps(self.state))
        write_json_atomic(self.state_path, snapshot)

    # ------------------------------------------------------------------ probing
    def _make_probe(self):
        cfg = self.config
        probe = make_probe(self.fetch, cfg['provider'], cfg['metadata_url'], timeout=cfg['probe_timeout'],
                           imds_version=cfg['imds_version'], evicting_kinds=cfg['evicting_kinds'])
        probe.poll_interval = float(cfg['poll_interval'])
        if hasattr(probe, 'max_hang'):
            probe.max_hang = int(cfg['gcp_max_hang'])
        return probe

    def check_once(self):
        """Probe once and act on what it says. Returns the notice (or None when blind)."""
        try:
            if self.probe is None:
                self.probe = self._make_probe()
            notice = self.probe.probe()
        except NoticeError as exc:
            self._blind(str(exc))
            return None
        if self.blind_since is not None:
            self.log('metadata service answers again after %.1f s blind' % (self.clock() - self.blind_since))
            self.blind_since, self.blind_error = None, None
            self.heartbeat_due = 0.0
            self.wake.set()
        self.last_ok = self.clock()
        if notice['kind'] == 'none':
            self.follower.resume()
        if notice['kind'] != 'none' and notice['notice_id'] not in self.state['notices']:
            self.on_notice(notice)
        return notice

    def _blind(self, error):
        if self.blind_since is None:
            self.blind_since = self.clock()
            self.log(Warning_('blind: %s' % error))
            self.heartbeat_due = 0.0  # tell the watcher now, not at the next heartbeat
            self.wake.set()
        self.blind_error = error

    def _heartbeat_now(self):
        self.heartbeat_due = 0.0
        self.wake.set()

    def on_notice(self, notice):
        detected_at = self.clock()
        if notice['evicting']:
            self.follower.pause('notice %s: the migration moves the emergency checkpoint' % notice['notice_id'])
        signalled = self.signal_workloads() if notice['evicting'] and self.config['signal_workloads'] else []
        signalled_at = self.clock() if signalled else None
        entry = {'notice': dict((k, v) for k, v in notice.items() if k not in ('notices',)),
                 'detected_at': iso_utc(detected_at), 'detected_epoch': detected_at,
                 'signalled': signalled, 'signalled_at': iso_utc(signalled_at), 'signalled_epoch': signalled_at,
                 'acked_at': None}
        with self.lock:
            self.state['notices'][notice['notice_id']] = entry
            self.state['pending'].append(notice['notice_id'])
        self._save_state()
        self.log('notice %s: %s %s (evicting: %s); signalled %s' % (
            notice['notice_id'], notice['provider'], notice['kind'], notice['evicting'],
            ', '.join('%s (%s)' % (s['name'], s.get('how') or s.get('error')) for s in signalled) or 'no workload'))
        self.wake.set()

    def signal_workloads(self):
        """Ask every running workload on this node to checkpoint now; never raises."""
        done = []
        for runtime in self.config['runtimes']:
            try:
                driver = create_driver(runtime, _run, shutil.which, self.config['workload_root'],
                                       self.config['container_cli'] if runtime != 'process' else None)
                names = driver.names()
            except (WorkloadError, OSError, ValueError) as exc:
                if runtime == 'process' or 'not installed' not in str(exc):
                    done.append({'name': '(%s)' % runtime, 'runtime': runtime, 'error': str(exc)})
                continue
            for name in names:
                try:
                    state = driver.status(name)
                    if state and state['running']:
                        how = request_checkpoint(driver, name, state['spec'])
                        done.append({'name': name, 'runtime': runtime, 'how': how, 'at_epoch': self.clock()})
                except (WorkloadError, OSError, ValueError) as exc:
                    done.append({'name': name, 'runtime': runtime, 'error': str(exc)})
        return done

    # ------------------------------------------------------------------ pushing
    def fence_workloads(self, fences):
        """The watcher says these copies were resumed elsewhere while this node was lost: stop and fence them before
        anything else (``workload state=fenced``: a fenced copy cannot be started again). Never raises."""
        done = []
        for fence in fences or []:
            name, fence_id = fence.get('workload'), fence.get('fence_id') or 'fenced by the watcher'
            if not name:
                continue
            for runtime in self.config['runtimes']:
                try:
                    driver = create_driver(runtime, _run, shutil.which, self.config['workload_root'],
                                           self.config['container_cli'] if runtime != 'process' else None)
                    if runtime != 'process' and not driver.status(name):
                        continue
                    result = ensure_fenced(driver, name, self.config['workload_root'], fence_id, False, 10.0)
                    done.append({'name': name, 'runtime': runtime, 'changed': result['changed']})
                    if result['changed']:
                        self.log('fenced %s (%s): it runs elsewhere since this node was declared lost' % (name, fence_id))
                    break
                except (WorkloadError, OSError, ValueError) as exc:
                    if runtime == 'process' or 'not installed' not in str(exc):
                        done.append({'name': name, 'runtime': runtime, 'error': str(exc)})
        return done

    def _post(self, payload):
        body = json.dumps(payload, sort_keys=True).encode('utf-8')
        headers = {'Content-Type': 'application/json', 'User-Agent': 'spot-eviction-agent/%s' % VERSION}
        headers.update(sign(self.secret, body))
        url = self.config['watcher_url'].rstrip('/') + '/v1/events'
        try:
            resp = self.fetch('POST', url, headers, float(self.config['push_timeout']), body)
        except NoticeError as exc:
            return False, str(exc)
        if 200 <= resp.status < 300:
            try:
                answer = json.loads(resp.text() or '{}')
            except ValueError:
                answer = {}
            if isinstance(answer, dict) and ('fence' in answer or 'replicate' in answer):
                self._instructions(answer, resp, headers[NONCE_HEADER])
            return True, None
        return False, 'HTTP %d from %s: %s' % (resp.status, url, resp.text()[:200])

    def _instructions(self, answer, resp, nonce):
        """Act on what an acknowledgement asks (stop fenced copies, replicate to these nodes) only when the watcher
        signed it with the shared secret in reply to this very push: nothing else may move checkpoints or stop jobs."""
        try:
            verify(self.secret, resp.headers, resp.body, lambda *_args: False)
            if answer.get('in_reply_to') != nonce:
                raise SignatureError('replayed', 'acknowledgement is not a reply to push %s' % nonce)
        except SignatureError as exc:
            self.log(Warning_('instructions in the acknowledgement ignored: %s' % exc))
            return
        if answer.get('fence'):
            self.fence_workloads(answer['fence'])
        if 'replicate' in answer:
            try:
                self.follower.update(answer['replicate'])
            except ValueError as exc:
                self.log(Warning_('replication plan refused: %s' % exc))

    def heartbeat_payload(self):
        now = self.clock()
        return {'type': 'heartbeat', 'node': self.config['node'], 'sent_at': iso_utc(now),
                'blind': self.blind_since is not None, 'error': self.blind_error,
                'blind_since': iso_utc(self.blind_since) if self.blind_since else None,
                'last_ok_at': iso_utc(self.last_ok) if self.last_ok else None,
                'provider': getattr(self.probe, 'provider', None), 'agent_version': VERSION,
                'capabilities': CAPABILITIES, 'pending': len(self.state['pending']),
                'heartbeat_interval': float(self.config['heartbeat_interval']),
                'replicas': self.follower.report(), 'replication_paused': self.follower.paused}

    def push_once(self):
        """Send what is due: pending notices first, then a heartbeat. Returns False when a send failed."""
        with self.lock:
            pending = list(self.state['pending'])
        for notice_id in pending:
            entry = self.state['notices'][notice_id]
            payload = {'type': 'notice', 'node': self.config['node'], 'notice': entry['notice'],
                       'detected_at': entry['detected_at'], 'detected_epoch': entry['detected_epoch'],
                       'signalled_at': entry['signalled_at'], 'signalled_epoch': entry.get('signalled_epoch'),
                       'signalled': entry['signalled'], 'sent_at': iso_utc(self.clock())}
            ok, error = self._post(payload)
            if not ok:
                self.log(Warning_('push of notice %s not acknowledged, will retry: %s' % (notice_id, error)))
                return False
            with self.lock:
                entry['acked_at'] = iso_utc(self.clock())
                self.state['pending'].remove(notice_id)
            self._save_state()
            self.log('watcher acknowledged notice %s' % notice_id)
        if self.clock() >= self.heartbeat_due:
            ok, error = self._post(self.heartbeat_payload())
            if not ok:
                self.log(Warning_('heartbeat not acknowledged: %s' % error))
                return False
            self.heartbeat_due = self.clock() + float(self.config['heartbeat_interval'])
        return True

    def _sender(self):
        backoff = 0.2
        while not self.stopping.is_set():
            if self.push_once():
                backoff = 0.2
                timeout = max(0.05, self.heartbeat_due - self.clock())
            else:
                timeout = backoff
                backoff = min(backoff * 2, float(self.config['max_backoff']))
            self.wake.wait(timeout)
            self.wake.clear()

    # ------------------------------------------------------------------ main loop
    def run(self):
        self.log('agent %s on %s: watcher %s, provider %s' % (
            VERSION, self.config['node'], self.config['watcher_url'], self.config['provider']))
        sender = threading.Thread(target=self._sender, name='sender')
        sender.daemon = True
        sender.start()
        follower = threading.Thread(target=self.follower.run, args=(self.stopping,), name='follower')
        follower.daemon = True
        follower.start()
        while not self.stopping.is_set():
            started = time.monotonic()
            notice = self.check_once()
            try:
                if notice is not None and not notice['evicting']:
                    self.probe.wait_step(float(self.config['gcp_max_hang']))
                else:
                    self.sleep(float(self.config['poll_interval']))
            except NoticeError as exc:
                self._blind(str(exc))
                self.sleep(float(self.config['poll_interval']))
            # A floor on every round: a GCP hanging GET that answers at once (a service that does not hang, or
            # fails fast) must not turn this loop into hundreds of requests a second.
            left = float(self.config['min_loop_interval']) - (time.monotonic() - started)
            if left > 0:
                self.sleep(left)
        self.wake.set()

    def stop(self, *_args):
        self.stopping.set()
        self.wake.set()


# ---------------------------------------------------------------------- the background process

def _start_ticks(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
    except (IOError, OSError, IndexError):
        return None
    return None if fields[0] == 'Z' else fields[19]


def read_pidfile(path):
    """{supervisor, start_ticks, config_digest} of a live supervisor, or None."""
    try:
        with open(path) as handle:
            info = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    pid = info.get('supervisor')
    if not pid or _start_ticks(pid) != info.get('start_ticks'):
        return None
    return info


def supervise(argv, pidfile, log_path, config_digest, node=None):
    """Double-fork a supervisor that keeps ``argv`` running (restarting it a second after it dies) and
    stops it on SIGTERM. Returns the supervisor's pid once its pid file is written."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle:
        os.close(write_end)
        os.waitpid(middle, 0)
        answer = os.read(read_end, 64).decode() or 'supervisor died before writing its pid file'
        os.close(read_end)
        if not answer.isdigit():
            raise AgentError(answer)
        return int(answer)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    for fd, target in ((devnull, 0), (log, 1), (log, 2)):
        os.dup2(fd, target)
    child = {'proc': None}
    stopping = []

    def _term(*_args):
        stopping.append(True)
        if child['proc'] is not None and child['proc'].poll() is None:
            child['proc'].terminate()

    signal.signal(signal.SIGTERM, _term)
    write_json_atomic(pidfile, {'supervisor': os.getpid(), 'start_ticks': _start_ticks(os.getpid()),
                                'config_digest': config_digest, 'started_at': time.time(), 'node': node})
    os.write(write_end, str(os.getpid()).encode())
    os.close(write_end)
    while not stopping:
        child['proc'] = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=log, close_fds=True)
        if stopping:  # SIGTERM came between the start and the assignment: this child was not told
            child['proc'].terminate()
        info = dict(read_pidfile(pidfile) or {}, agent=child['proc'].pid, agent_ticks=_start_ticks(child['proc'].pid))
        if info.get('supervisor') == os.getpid():
            write_json_atomic(pidfile, info)
        child['proc'].wait()
        if not stopping:
            time.sleep(1.0)
    os._exit(0)


def stop_supervised(pidfile, timeout=10.0):
    """Stop the supervisor and its agent; True when something was running."""
    info = read_pidfile(pidfile)
    if info is None:
        return False
    _stop_processes([(info.get('supervisor'), info.get('start_ticks')), (info.get('agent'), info.get('agent_ticks'))],
                    timeout)
    # The supervisor may have restarted the agent after the pid file was read: whatever agent the file names now
    # goes too, and stop returns only when nothing it started lives.
    try:
        with open(pidfile) as handle:
            latest = json.load(handle)
    except (IOError, OSError, ValueError):
        latest = {}
    if latest.get('agent') and latest.get('agent') != info.get('agent'):
        _stop_processes([(latest.get('agent'), latest.get('agent_ticks'))], timeout)
    return True


def _stop_processes(processes, timeout):
    """SIGTERM each ``(pid, start ticks)`` still alive, SIGKILL what is left after ``timeout``, and return only once all
    are gone. SIGTERM is sent again every second: one that reached a child between the supervisor's fork and its exec
    ran the supervisor's handler there and was lost (stopping is idempotent). A kill is delivered asynchronously and the
    state directory's lock is released only when the process has ended, so a start right after a stop would be
    refused if this returned earlier."""
    def alive():
        return [(pid, ticks) for pid, ticks in processes if pid and _start_ticks(pid) == ticks]

    def send(sig):
        for pid, _ticks in alive():
            try:
                os.kill(pid, sig)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise

    end = time.time() + timeout
    again = 0.0
    while time.time() < end and alive():
        if time.time() >= again:
            send(signal.SIGTERM)
            again = time.time() + 1.0
        time.sleep(0.05)
    send(signal.SIGKILL)
    end = time.time() + 5.0
    while time.time() < end and alive():
        time.sleep(0.01)


def _digest(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _say(data):
    sys.stdout.write(json.dumps(data) + '\n')


def main(argv=None):
    """``spot-eviction-agent --config FILE run|start|stop|status``: prints one JSON line for start/stop/status."""
    import argparse
    parser = argparse.ArgumentParser(prog='spot-eviction-agent')
    parser.add_argument('--config', required=True)
    parser.add_argument('command', choices=('run', 'start', 'stop', 'status'))
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        pidfile = os.path.join(config['state_dir'], 'agent.pid')
        if args.command == 'run':
            hold_state_dir(config['state_dir'])  # held until this process ends
            agent = Agent(config)
            signal.signal(signal.SIGTERM, agent.stop)
            signal.signal(signal.SIGINT, agent.stop)
            agent.run()
            return 0
        if args.command == 'status':
            info = read_pidfile(pidfile)
            _say({'running': info is not None, 'supervisor': (info or {}).get('supervisor'),
                  'agent': (info or {}).get('agent')})
            return 0
        if args.command == 'stop':
            _say({'changed': stop_supervised(pidfile)})
            return 0
        digest = _digest(args.config)
        info = read_pidfile(pidfile)
        if info is not None and info.get('node') not in (None, config['node']):
            raise AgentError('state directory %s is used by the agent of node %s (supervisor pid %s), not %s: give '
                             'each node its own spot_state_dir' % (config['state_dir'], info['node'],
                                                                   info['supervisor'], config['node']))
        if info is not None and info.get('config_digest') == digest:
            _say({'changed': False, 'supervisor': info['supervisor']})
            return 0
        restarted = stop_supervised(pidfile)
        os.close(hold_state_dir(config['state_dir']))  # another agent's state dir is refused here, not in the background
        Agent(config)  # refuse a bad secret or state dir here, not in the background
        launcher = [sys.executable, os.path.abspath(sys.argv[0]), '--config', os.path.abspath(args.config), 'run']
        pid = supervise(launcher, pidfile, os.path.join(config['state_dir'], 'agent.log'), digest, config['node'])
        _say({'changed': True, 'restarted': restarted, 'supervisor': pid})
        return 0
    except (AgentError, NoticeError, SignatureError, IOError, OSError) as exc:
        sys.stderr.write('spot-eviction-agent: %s\n' % exc)
        return 2
