# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run one workload on a node, whatever runs it: a container CLI (docker, podman) or a plain
process under a small supervisor. Drivers sit behind :class:`Driver`; :func:`create_driver`
picks one. Everything is argv lists; names, arguments and paths are data, never shell.

No Ansible imports: commands go through a ``run(argv) -> (rc, stdout, stderr)`` callable.
"""

from __future__ import absolute_import, division, print_function

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

from ._checkpoint import CheckpointError, find_checkpoint, wait_for_checkpoint
from ._common import write_json_atomic
from ._gang import GangError, check_gang, gang_env, member_name

__metaclass__ = type

RUNTIMES = ('docker', 'podman', 'process')
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$')
SPEC_LABEL = 'spot.migration.spec'
MANAGED_LABEL = 'spot.migration.managed'
SPEC_KEYS = ('name', 'runtime', 'image', 'command', 'args', 'resume_from', 'resume_arg', 'gpus', 'env', 'volumes',
             'checkpoint_dir', 'checkpoint_signal', 'checkpoint_command', 'workdir', 'gang')
SIM_GPU_ENV = 'SPOT_SIM_GPU_STATE'


class WorkloadError(Exception):
    """A workload operation failed; the message names the workload and the value at fault."""

    def __init__(self, message, **details):
        super(WorkloadError, self).__init__(message)
        self.details = details


def run_argv(argv, stdin=None, timeout=None):
    """Run an argv list (never a shell) outside Ansible (the agent): ``(rc, stdout, stderr)`` as text, with ``LC_ALL=C``
    so tools' messages parse the same everywhere; ``stdin`` text is fed in; past ``timeout`` seconds the process is
    killed and rc is -9."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else None, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, LC_ALL='C'))
    try:
        out, err = proc.communicate(stdin.encode('utf-8') if stdin is not None else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -9, out.decode('utf-8', 'replace'), 'timed out after %ss' % timeout
    return proc.returncode, out.decode('utf-8', 'replace'), err.decode('utf-8', 'replace')


def default_root():
    if hasattr(os, 'geteuid') and os.geteuid() == 0:
        return '/var/lib/spot-migration/workloads'
    return os.path.join(os.path.expanduser('~'), '.local', 'share', 'spot-migration', 'workloads')


def signal_number(name):
    value = str(name).upper()
    if not value.startswith('SIG'):
        value = 'SIG' + value
    number = getattr(signal, value, None)
    if not isinstance(number, int):
        raise WorkloadError('unknown signal %r' % (name,))
    return int(number)


def build_spec(params):
    """The stored description of a workload: everything needed to re-create it elsewhere."""
    name = params.get('name') or ''
    if not NAME_RE.match(name):
        raise WorkloadError('workload name %r is not allowed: use letters, digits, ".", "_" and "-" '
                            '(up to 63, starting with a letter or digit)' % (name,))
    runtime = params.get('runtime') or 'process'
    if runtime not in RUNTIMES:
        raise WorkloadError('runtime must be one of %s, not %r' % (', '.join(RUNTIMES), runtime))
    spec = dict((k, params.get(k)) for k in SPEC_KEYS)
    spec['runtime'] = runtime
    spec['command'] = [str(a) for a in (params.get('command') or [])]
    spec['args'] = [str(a) for a in (params.get('args') or [])]
    spec['resume_arg'] = [str(a) for a in (params.get('resume_arg') or ['--resume', '{checkpoint}'])]
    spec['env'] = dict((str(k), str(v)) for k, v in (params.get('env') or {}).items())
    spec['volumes'] = [str(v) for v in (params.get('volumes') or [])]
    spec['checkpoint_signal'] = params.get('checkpoint_signal') or 'SIGUSR1'
    spec['checkpoint_command'] = [str(a) for a in (params.get('checkpoint_command') or [])]
    signal_number(spec['checkpoint_signal'])
    for key in spec['env']:
        if not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', key):
            raise WorkloadError('environment variable name %r is not allowed' % (key,))
    if runtime == 'process':
        if not spec['command']:
            raise WorkloadError('workload %s: runtime process needs a command (an argv list)' % name)
        if spec['image']:
            raise WorkloadError('workload %s: image is for container runtimes, not process' % name)
    else:
        if not spec['image']:
            raise WorkloadError('workload %s: runtime %s needs an image' % (name, runtime))
        for volume in spec['volumes']:
            parts = volume.split(':')
            if len(parts) not in (2, 3) or not parts[0].startswith('/') or not parts[1].startswith('/'):
                raise WorkloadError('volume %r must be /host/path:/container/path[:options] (no ":" inside paths)'
                                    % (volume,))
        for path in (spec['checkpoint_dir'], spec['resume_from']):
            if path and ':' in path:
                raise WorkloadError('path %r contains ":", which container volume syntax cannot carry' % (path,))
    if spec.get('gang'):
        try:
            spec['gang'] = check_gang(spec['gang'])
        except GangError as exc:
            raise WorkloadError('workload %s: %s' % (name, exc))
        expected = member_name(spec['gang']['name'], spec['gang']['rank'])
        if name != expected:
            raise WorkloadError('workload %s is member %d of gang %s: its name must be %s'
                                % (name, spec['gang']['rank'], spec['gang']['name'], expected))
        spec['env'].update(gang_env(spec['gang']))  # the rendezvous wins over the same names in env
    else:
        spec['gang'] = None
    if spec['resume_from'] and not any('{checkpoint}' in a for a in spec['resume_arg']):
        raise WorkloadError('resume_arg %r has no {checkpoint} placeholder for resume_from' % (spec['resume_arg'],))
    return spec


def workload_argv(spec):
    """command + args (+ resume_arg with the checkpoint substituted, as data)."""
    argv = list(spec['command']) + list(spec['args'])
    if spec.get('resume_from'):
        argv += [a.replace('{checkpoint}', spec['resume_from']) for a in spec['resume_arg']]
    return argv


def spec_differences(current, desired):
    keys = sorted(set(current) | set(desired))
    return [k for k in keys if current.get(k) != desired.get(k)]


def pick_gpus(gpus, gpu_lister):
    """``gpus``: None, a count, or a list of indices. A count takes that many free GPUs now."""
    if gpus in (None, '', 0, '0'):
        return []
    if isinstance(gpus, (list, tuple)):
        return [int(g) for g in gpus]
    count = int(gpus)
    free = gpu_lister()
    if len(free) < count:
        raise WorkloadError('%d GPU(s) asked for, only %d free (%s)' % (count, len(free), free))
    return free[:count]


# ---------------------------------------------------------------------------- drivers

class Driver:
    runtime = None

    def status(self, name):
        """None when there is no such workload, else a dict with ``running``, ``pid``, ``spec``..."""
        raise NotImplementedError

    def start(self, spec):
        raise NotImplementedError

    def send_signal(self, name, signum_name):
        raise NotImplementedError

    def exec_command(self, name, argv):
        raise NotImplementedError

    def stop(self, name, timeout, hard=False):
        """Stop gracefully (SIGTERM, then SIGKILL after ``timeout``), or at once with SIGKILL when ``hard``; returns
        'SIGTERM' or 'SIGKILL' (what ended it)."""
        raise NotImplementedError

    def remove(self, name):
        raise NotImplementedError

    def names(self):
        raise NotImplementedError


SUPERVISOR = r'''
import json, os, subprocess, sys, time
spec_dir = sys.argv[1]
with open(os.path.join(spec_dir, "launch.json")) as handle:
    launch = json.load(handle)
def write(name, data):
    tmp = os.path.join(spec_dir, name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.rename(tmp, os.path.join(spec_dir, name))
read_end, write_end = os.pipe()
if os.fork():
    os.close(write_end)
    answer = os.read(read_end, 4096).decode() or "supervisor died before starting the workload"
    sys.stdout.write(answer)
    sys.exit(0 if answer.startswith("ok") else 1)
os.close(read_end)
os.setsid()
if os.fork():
    os._exit(0)
log = open(os.path.join(spec_dir, "output.log"), "ab")
devnull = open(os.devnull, "rb")
os.dup2(devnull.fileno(), 0)
os.dup2(log.fileno(), 1)
os.dup2(log.fileno(), 2)
try:
    child = subprocess.Popen(launch["argv"], env=launch["env"], cwd=launch["cwd"], stdin=devnull, stdout=log,
                             stderr=log, close_fds=True)
except OSError as exc:
    os.write(write_end, ("cannot start %r: %s" % (launch["argv"][0], exc)).encode())
    sys.exit(1)
with open("/proc/%d/stat" % child.pid) as handle:
    start_ticks = handle.read().rsplit(")", 1)[1].split()[19]
write("workload.pid", {"pid": child.pid, "supervisor": os.getpid(), "start_ticks": start_ticks,
                       "started_at": time.time()})
os.write(write_end, ("ok %d" % child.pid).encode())
os.close(write_end)
code = child.wait()
write("status.json", {"exit_code": code, "ended_at": time.time()})
'''


def _alive(pid, start_ticks):
    """True while ``pid`` is the same process (same kernel start time) and not a zombie."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
    except (IOError, OSError, IndexError, TypeError):
        return False
    return fields[0] != 'Z' and fields[19] == start_ticks


class ProcessDriver(Driver):
    """A plain process, started by a double-forked supervisor that records its pid (with the kernel's
    start time, so a reused pid is never mistaken for the workload) and its exit status."""

    runtime = 'process'

    def __init__(self, run, root=None, python=None):
        self.run = run
        self.root = root or default_root()
        self.python = python or sys.executable or '/usr/bin/python3'

    def _dir(self, name):
        return os.path.join(self.root, name)

    def _read(self, name, filename):
        try:
            with open(os.path.join(self._dir(name), filename)) as handle:
                return json.load(handle)
        except (IOError, OSError, ValueError):
            return None

    def status(self, name):
        spec = self._read(name, 'spec.json')
        if spec is None:
            return None
        pidinfo = self._read(name, 'workload.pid') or {}
        pid = pidinfo.get('pid')
        running = bool(pid) and _alive(pid, pidinfo.get('start_ticks'))
        ended = self._read(name, 'status.json') or {}
        return {'name': name, 'runtime': 'process', 'running': running, 'pid': pid if running else None,
                'container_id': None, 'spec': spec, 'started_at': pidinfo.get('started_at'),
                'start_ticks': pidinfo.get('start_ticks'),
                'exit_code': None if running else ended.get('exit_code'), 'log': os.path.join(self._dir(name), 'output.log')}

    def start(self, spec):
        directory = self._dir(spec['name'])
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o750)
        env = dict(os.environ)
        env.update(spec['env'])
        env['SPOT_WORKLOAD'] = spec['name']
        if spec.get('gpus'):
            env['CUDA_VISIBLE_DEVICES'] = ','.join(str(g) for g in spec['gpus'])
        cwd = spec.get('workdir') or spec.get('checkpoint_dir') or directory
        if not os.path.isdir(cwd):
            os.makedirs(cwd)
        for stale in ('status.json', 'workload.pid'):
            if os.path.exists(os.path.join(directory, stale)):
                os.unlink(os.path.join(directory, stale))
        write_json_atomic(os.path.join(directory, 'spec.json'), spec)
        write_json_atomic(os.path.join(directory, 'launch.json'), {'argv': workload_argv(spec), 'env': env, 'cwd': cwd})
        rc, out, err = self.run([self.python, '-c', SUPERVISOR, directory])
        os.unlink(os.path.join(directory, 'launch.json'))
        if rc != 0:
            raise WorkloadError('workload %s did not start: %s' % (spec['name'], (out + err).strip()), rc=rc)

    def send_signal(self, name, signum_name):
        state = self.status(name)
        if not state or not state['running']:
            raise WorkloadError('workload %s is not running' % name)
        os.kill(state['pid'], signal_number(signum_name))

    def exec_command(self, name, argv):
        state = self.status(name)
        env_prefix = ['env', 'SPOT_WORKLOAD_PID=%s' % (state or {}).get('pid')]
        return self.run(env_prefix + list(argv))

    def stop(self, name, timeout, hard=False):
        state = self.status(name)
        if not state or not state['running']:
            return None
        pid, ticks = state['pid'], state['start_ticks']
        if not hard:
            os.kill(pid, signal.SIGTERM)
            if _wait_dead(pid, ticks, timeout):
                return 'SIGTERM'
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        _wait_dead(pid, ticks, 10)
        return 'SIGKILL'

    def remove(self, name):
        directory = self._dir(name)
        for filename in ('spec.json', 'workload.pid', 'status.json', 'output.log', 'launch.json'):
            path = os.path.join(directory, filename)
            if os.path.exists(path):
                os.unlink(path)
        try:
            os.rmdir(directory)
        except OSError:
            pass

    def names(self):
        if not os.path.isdir(self.root):
            return []
        return sorted(n for n in os.listdir(self.root) if os.path.exists(os.path.join(self.root, n, 'spec.json')))


def _wait_dead(pid, ticks, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if not _alive(pid, ticks):
            return True
        time.sleep(0.05)
    return not _alive(pid, ticks)


class ContainerDriver(Driver):
    """docker or podman through their (compatible) command lines."""

    def __init__(self, run, cli, runtime):
        self.run = run
        self.cli = cli
        self.runtime = runtime

    def _call(self, args, ok=(0,)):
        argv = [self.cli] + list(args)
        rc, out, err = self.run(argv)
        if rc not in ok:
            raise WorkloadError('%s failed (rc %d): %s' % (' '.join(argv[:3]), rc, (err or out).strip()),
                                rc=rc, stdout=out, stderr=err, cmd=argv)
        return rc, out, err

    def _inspect(self, name):
        rc, out, err = self.run([self.cli, 'container', 'inspect', name])
        if rc != 0:
            if 'no such' in (err + out).lower():
                return None
            raise WorkloadError('%s container inspect %s failed (rc %d): %s' % (self.cli, name, rc, err.strip()))
        data = json.loads(out)
        return data[0] if isinstance(data, list) and data else None

    def status(self, name):
        info = self._inspect(name)
        if info is None:
            return None
        labels = (info.get('Config') or {}).get('Labels') or {}
        if labels.get(MANAGED_LABEL) != 'true':
            raise WorkloadError('container %s exists and is not managed by spot.migration; remove or rename it' % name)
        state = info.get('State') or {}
        running = bool(state.get('Running'))
        return {'name': name, 'runtime': self.runtime, 'running': running, 'pid': state.get('Pid') if running else None,
                'container_id': info.get('Id'), 'spec': json.loads(labels.get(SPEC_LABEL) or '{}'),
                'started_at': state.get('StartedAt'), 'exit_code': None if running else state.get('ExitCode'),
                'log': None}

    def start(self, spec):
        argv = ['run', '--detach', '--name', spec['name'], '--label', '%s=true' % MANAGED_LABEL,
                '--label', '%s=%s' % (SPEC_LABEL, json.dumps(spec, sort_keys=True, separators=(',', ':')))]
        env = dict(spec['env'])
        env['SPOT_WORKLOAD'] = spec['name']
        if spec.get('gpus'):
            indices = ','.join(str(g) for g in spec['gpus'])
            if os.environ.get(SIM_GPU_ENV):
                # Simulated GPUs (local fleet): the stand-in sees the container's processes by their environment.
                env['CUDA_VISIBLE_DEVICES'] = indices
                env[SIM_GPU_ENV] = os.environ[SIM_GPU_ENV]
            elif self.runtime == 'docker':
                argv += ['--gpus', 'device=%s' % indices]
            else:
                for index in spec['gpus']:
                    argv += ['--device', 'nvidia.com/gpu=%s' % index]
        for key in sorted(env):
            argv += ['--env', '%s=%s' % (key, env[key])]
        volumes = list(spec['volumes'])
        mounted = [v.split(':')[0] for v in volumes]
        for path in (spec.get('checkpoint_dir'),):
            if path and path not in mounted:
                if not os.path.isdir(path):
                    os.makedirs(path)
                volumes.append('%s:%s' % (path, path))
        for volume in volumes:
            argv += ['--volume', volume]
        if spec.get('workdir'):
            argv += ['--workdir', spec['workdir']]
        command = workload_argv(spec)
        if spec['command']:
            argv += ['--entrypoint', spec['command'][0], spec['image']] + command[1:]
        else:
            argv += [spec['image']] + command
        self._call(argv)

    def send_signal(self, name, signum_name):
        self._call(['kill', '--signal', 'SIG' + str(signum_name).upper().replace('SIG', '', 1), name])

    def exec_command(self, name, argv):
        return self.run([self.cli, 'exec', name] + list(argv))

    def stop(self, name, timeout, hard=False):
        state = self.status(name)
        if not state or not state['running']:
            return None
        if hard:
            self._call(['kill', '--signal', 'KILL', name], ok=(0, 1, 125))  # it may have exited meanwhile
            self._call(['wait', name], ok=(0, 1, 125))
            return 'SIGKILL'
        self._call(['stop', '--time', str(int(max(1, round(timeout)))), name])
        after = self._inspect(name) or {}
        code = (after.get('State') or {}).get('ExitCode')
        return 'SIGKILL' if code == 137 else 'SIGTERM'

    def remove(self, name):
        self._call(['rm', '--force', name], ok=(0, 1))

    def names(self):
        _rc, out, _err = self._call(['ps', '--all', '--filter', 'label=%s=true' % MANAGED_LABEL,
                                     '--format', '{{.Names}}'])
        return sorted(n.strip() for n in out.splitlines() if n.strip())


def create_driver(runtime, run, which, workload_root=None, container_cli=None, python=None):
    """The one factory for workload drivers."""
    if runtime == 'process':
        return ProcessDriver(run, workload_root, python)
    if runtime in ('docker', 'podman'):
        cli = container_cli or which(runtime)
        if not cli:
            raise WorkloadError('runtime %s: the %s command is not installed on this node' % (runtime, runtime))
        return ContainerDriver(run, cli, runtime)
    raise WorkloadError('runtime must be one of %s, not %r' % (', '.join(RUNTIMES), runtime))


# ---------------------------------------------------------------------------- the states

def public(state, keep_spec=False):
    """A driver's status as modules return it."""
    if not state:
        return None
    hidden = ('start_ticks',) if keep_spec else ('spec', 'start_ticks')
    return dict((k, v) for k, v in state.items() if k not in hidden)


def ensure_started(driver, spec, check_mode, recreate=False, start_timeout=10.0):
    current = driver.status(spec['name'])
    if current and current['running']:
        differences = spec_differences(current['spec'], spec)
        if not differences:
            return {'changed': False, 'workload': public(current), 'spec': spec}
        if not recreate:
            raise WorkloadError('workload %s is already running with a different spec (differs in: %s); set '
                                'recreate: true to replace it, or stop it first' % (spec['name'], ', '.join(differences)),
                                differences=differences)
        if not check_mode:
            driver.stop(spec['name'], 30)
            driver.remove(spec['name'])
    if check_mode:
        return {'changed': True, 'workload': public(current), 'spec': spec}
    if current and not current['running']:
        driver.remove(spec['name'])
    if spec.get('resume_from') and not os.path.exists(spec['resume_from']):
        raise WorkloadError('resume_from %s does not exist on this node' % spec['resume_from'])
    driver.start(spec)
    end = time.time() + start_timeout
    state = driver.status(spec['name'])
    while (not state or not state['running']) and time.time() < end:
        time.sleep(0.1)
        state = driver.status(spec['name'])
    if not state or not state['running']:
        raise WorkloadError('workload %s exited right after starting (exit code %s); see %s'
                            % (spec['name'], (state or {}).get('exit_code'), (state or {}).get('log') or 'its logs'))
    return {'changed': True, 'workload': public(state), 'spec': spec}


def request_checkpoint(driver, name, spec):
    """Ask a running workload to checkpoint now, the way its spec says (command or signal); do not wait.
    Returns how it was asked: ``command`` or the signal's name."""
    if spec.get('checkpoint_command'):
        rc, out, err = driver.exec_command(name, spec['checkpoint_command'])
        if rc != 0:
            raise WorkloadError('checkpoint_command for %s failed (rc %d): %s' % (name, rc, (err or out).strip()))
        return 'command'
    how = spec.get('checkpoint_signal') or 'SIGUSR1'
    driver.send_signal(name, how)
    return how


def ask_checkpoint(driver, name, check_mode, checkpoint_dir=None, stable_for=0.0, signalled_at=None):
    """Ask a running workload for a checkpoint now and return at once (``await_checkpoint`` waits for it).

    ``signalled_at``: the workload was already asked at that time (by the eviction agent); a complete checkpoint
    newer than it is taken as it is, without asking a second time. Returns ``{changed, workload, checkpoint (the
    complete one already there, else None), directory, signalled_at, signal}``."""
    current = driver.status(name)
    if not current or not current['running']:
        raise WorkloadError('workload %s is not running, so it cannot checkpoint' % name)
    spec = current['spec']
    directory = checkpoint_dir or spec.get('checkpoint_dir')
    if not directory:
        raise WorkloadError('workload %s has no checkpoint_dir to watch' % name)
    if signalled_at is not None:
        try:
            found = find_checkpoint(directory, newer_than=float(signalled_at) - 0.001, stable_for=stable_for)
        except CheckpointError:
            found = None
        if found is not None:
            found['signalled_at'] = float(signalled_at)
            found['signal'] = 'earlier'
            return {'changed': False, 'workload': public(current), 'checkpoint': found, 'directory': directory,
                    'signalled_at': float(signalled_at), 'signal': 'earlier'}
    if check_mode:
        return {'changed': True, 'workload': public(current), 'checkpoint': None, 'directory': directory,
                'signalled_at': None, 'signal': spec.get('checkpoint_signal')}
    signalled_at = time.time()
    how = request_checkpoint(driver, name, spec)
    return {'changed': True, 'workload': public(current), 'checkpoint': None, 'directory': directory,
            'signalled_at': signalled_at, 'signal': how}


def await_checkpoint(driver, name, directory, signalled_at, how, deadline, stable_for=0.0):
    """Wait up to ``deadline`` seconds for a complete checkpoint in ``directory`` newer than ``signalled_at`` (the
    answer to ``ask_checkpoint``). WorkloadError, naming the newest complete checkpoint on disk, when none comes."""
    try:
        found = wait_for_checkpoint(directory, wait_timeout=max(float(deadline), 0.0), interval=0.1,
                                    newer_than=float(signalled_at) - 0.001, stable_for=stable_for)
    except CheckpointError as exc:
        try:
            newest = find_checkpoint(directory)
            fallback = 'the newest complete checkpoint on disk is %s (step %s)' % (newest['checkpoint'], newest['step'])
        except CheckpointError:
            newest, fallback = None, 'there is no complete checkpoint on disk'
        still = driver.status(name)
        raise WorkloadError('workload %s wrote no complete checkpoint within %.1f s of %s; it is %s; %s'
                            % (name, float(deadline), how, 'still running' if still and still['running'] else 'not running',
                               fallback),
                            rejected=exc.details.get('rejected', []), newest=newest, signalled_at=signalled_at)
    found['signalled_at'] = signalled_at
    found['signal'] = how
    return found


def ensure_checkpointed(driver, name, check_mode, deadline=60.0, checkpoint_dir=None, stable_for=0.0,
                        signalled_at=None):
    """Signal the workload, then wait up to ``deadline`` for a complete checkpoint newer than the signal.

    ``signalled_at``: the workload was already asked at that time (by the eviction agent); a complete checkpoint
    newer than it is taken as it is, without asking a second time."""
    asked = ask_checkpoint(driver, name, check_mode, checkpoint_dir, stable_for, signalled_at)
    if asked['checkpoint'] is not None:
        return {'changed': False, 'workload': asked['workload'], 'checkpoint': asked['checkpoint']}
    if check_mode:
        return {'changed': True, 'workload': asked['workload'], 'signal': asked['signal'],
                'checkpoint_dir': asked['directory']}
    found = await_checkpoint(driver, name, asked['directory'], asked['signalled_at'], asked['signal'], deadline,
                             stable_for)
    return {'changed': True, 'workload': public(driver.status(name)), 'checkpoint': found}


def ensure_stopped(driver, name, check_mode, stop_timeout=30.0, hard=False):
    """Stopped (``hard``: SIGKILL at once, for a job whose checkpoint is already taken). Idempotent."""
    current = driver.status(name)
    if not current or not current['running']:
        return {'changed': False, 'workload': public(current), 'stopped_by': None}
    if check_mode:
        return {'changed': True, 'workload': public(current), 'stopped_by': None}
    how = driver.stop(name, stop_timeout, hard=hard)
    return {'changed': True, 'workload': public(driver.status(name)), 'stopped_by': how}


def ensure_absent(driver, name, check_mode, stop_timeout=30.0):
    current = driver.status(name)
    if not current:
        return {'changed': False, 'workload': None, 'stopped_by': None}
    if check_mode:
        return {'changed': True, 'workload': public(current), 'stopped_by': None}
    how = driver.stop(name, stop_timeout) if current['running'] else None
    driver.remove(name)
    return {'changed': True, 'workload': None, 'stopped_by': how}


# ---------------------------------------------------------------------------- fences
def fence_path(root, name):
    """Marker saying this node's copy of ``name`` was fenced: it moved elsewhere while this node was lost."""
    return os.path.join(root or default_root(), '.fenced', name)


def read_fence(root, name):
    try:
        with open(fence_path(root, name)) as handle:
            return json.load(handle)
    except (IOError, OSError):
        return None
    except ValueError:
        return {'fence_id': 'unreadable marker'}


def ensure_fenced(driver, name, root, fence_id, check_mode, stop_timeout=30.0):
    """Stop and remove this node's copy (it must never run again here) and leave the marker that makes ``started``
    refuse it. Idempotent."""
    removed = ensure_absent(driver, name, check_mode, stop_timeout)
    marker = read_fence(root, name)
    changed = removed['changed'] or marker is None or marker.get('fence_id') != fence_id
    if changed and not check_mode:
        path = fence_path(root, name)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path), 0o700)
        write_json_atomic(path, {'fence_id': fence_id, 'fenced_at': time.time()}, indent=None)
    return {'changed': changed, 'workload': None, 'stopped_by': removed['stopped_by'], 'fence_id': fence_id}


def check_fence(root, name, clear_fence, check_mode):
    """Before ``started``: refuse a fenced copy unless the caller moves the workload back here on purpose."""
    marker = read_fence(root, name)
    if marker is None:
        return False
    if not clear_fence:
        raise WorkloadError('workload %s is fenced on this node (%s): it was resumed elsewhere while this node was '
                            'lost, so this copy must not run; set clear_fence: true only to move it back here'
                            % (name, marker.get('fence_id')), fence=marker)
    if not check_mode:
        os.unlink(fence_path(root, name))
    return True
