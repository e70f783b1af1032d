# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which GPUs a node has and which are free: NVML through ctypes, or nvidia-smi's scripted CSV.

Both backends sit behind :class:`GpuBackend`; :func:`create_backend` picks one. No Ansible
imports: commands run through a ``run_command(argv) -> (rc, stdout, stderr)`` callable the
caller passes in (the module passes ``module.run_command`` with ``LC_ALL=C``).
"""

from __future__ import absolute_import, division, print_function

import ctypes
import os

__metaclass__ = type

GPU_FIELDS = ('index', 'uuid', 'name', 'memory.total', 'memory.used', 'memory.free', 'utilization.gpu',
              'temperature.gpu', 'mig.mode.current', 'driver_version')
APP_FIELDS = ('gpu_uuid', 'pid', 'process_name', 'used_memory')
NOT_AVAILABLE = ('[N/A]', '[Not Supported]', 'N/A', '[Unknown Error]', '[Insufficient Permissions]', '')
NVML_LIBRARY = 'libnvidia-ml.so.1'


class GpuError(Exception):
    """GPU facts could not be read; carries rc/stdout/stderr of a failed command where there was one."""

    def __init__(self, message, **details):
        super(GpuError, self).__init__(message)
        self.details = details


def _int_or_none(value, line):
    value = value.strip()
    if value in NOT_AVAILABLE:
        return None
    # Without nounits nvidia-smi appends units ("81559 MiB", "35 %"); accept them too.
    for unit in (' MiB', ' %', ' C'):
        if value.endswith(unit):
            value = value[:-len(unit)]
    try:
        return int(float(value))
    except ValueError:
        raise GpuError('nvidia-smi printed a value that is not a number: %r in line %r' % (value, line))


def _text_or_none(value):
    value = value.strip()
    return None if value in NOT_AVAILABLE else value


def parse_gpu_csv(text):
    """Parse ``--query-gpu=<GPU_FIELDS> --format=csv,noheader,nounits`` output."""
    gpus = []
    driver = None
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(',')]
        if len(parts) != len(GPU_FIELDS):
            raise GpuError('nvidia-smi printed a line with %d fields where %d were asked for: %r'
                           % (len(parts), len(GPU_FIELDS), line))
        index = _int_or_none(parts[0], line)
        if index is None:
            raise GpuError('nvidia-smi printed a GPU without an index: %r' % line)
        driver = _text_or_none(parts[9]) or driver
        gpus.append({
            'index': index,
            'uuid': _text_or_none(parts[1]),
            'name': _text_or_none(parts[2]),
            'memory_total_mb': _int_or_none(parts[3], line),
            'memory_used_mb': _int_or_none(parts[4], line),
            'memory_free_mb': _int_or_none(parts[5], line),
            'utilization_gpu': _int_or_none(parts[6], line),
            'temperature_c': _int_or_none(parts[7], line),
            'mig_mode': _text_or_none(parts[8]),
            'processes': [],
        })
    return gpus, driver


def parse_apps_csv(text):
    """Parse ``--query-compute-apps=<APP_FIELDS> --format=csv,noheader,nounits`` output."""
    apps = []
    for line in text.splitlines():
        if not line.strip() or line.startswith('No running'):
            continue
        head = line.split(',', 2)
        if len(head) != 3 or ',' not in head[2]:
            raise GpuError('nvidia-smi printed a compute-apps line that does not parse: %r' % line)
        # The process name may itself contain commas: the memory is the last field.
        name, memory = head[2].rsplit(',', 1)
        pid = _int_or_none(head[1], line)
        apps.append({'gpu_uuid': head[0].strip(), 'pid': pid, 'name': name.strip(),
                     'used_memory_mb': _int_or_none(memory, line)})
    return apps


def select_free(gpus, min_free_memory_mb=0, max_utilization=10, require_no_processes=True):
    """Indices of GPUs that meet the thresholds. Unknown utilization does not disqualify;
    unknown free memory does (when a minimum is asked for)."""
    free = []
    for gpu in gpus:
        if gpu['mig_mode'] == 'Enabled':
            # A MIG-partitioned GPU is not a whole free GPU for a training job.
            continue
        if min_free_memory_mb and (gpu['memory_free_mb'] is None or gpu['memory_free_mb'] < min_free_memory_mb):
            continue
        if gpu['utilization_gpu'] is not None and gpu['utilization_gpu'] > max_utilization:
            continue
        if require_no_processes and gpu['processes']:
            continue
        free.append(gpu['index'])
    return free


class GpuBackend:
    name = None

    def read(self):
        """Return ``(gpus, driver_version)``; each GPU has its ``processes`` filled in."""
        raise NotImplementedError


class NvidiaSmiBackend(GpuBackend):
    name = 'nvidia-smi'

    def __init__(self, run_command, path='nvidia-smi'):
        self.run_command = run_command
        self.path = path

    def _call(self, args):
        argv = [self.path] + args
        rc, out, err = self.run_command(argv)
        if rc != 0:
            text = (out.strip() + ' ' + err.strip()).strip()
            raise GpuError('%s failed (rc %d): %s' % (' '.join(argv), rc, text or '(no output)'),
                           rc=rc, stdout=out, stderr=err, cmd=argv)
        return out

    def read(self):
        gpus, driver = parse_gpu_csv(self._call(['--query-gpu=' + ','.join(GPU_FIELDS),
                                                 '--format=csv,noheader,nounits']))
        apps = parse_apps_csv(self._call(['--query-compute-apps=' + ','.join(APP_FIELDS),
                                          '--format=csv,noheader,nounits']))
        by_uuid = dict((g['uuid'], g) for g in gpus)
        for app in apps:
            gpu = by_uuid.get(app['gpu_uuid'])
            if gpu is None:
                raise GpuError('nvidia-smi listed a process on an unknown GPU %r' % app['gpu_uuid'])
            gpu['processes'].append({'pid': app['pid'], 'name': app['name'], 'used_memory_mb': app['used_memory_mb']})
        return gpus, driver


# ---------------------------------------------------------------------------- NVML

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_TEMPERATURE_GPU = 0
MIB = 1024 * 1024


class NvmlMemory(ctypes.Structure):
    _fields_ = [('total', ctypes.c_ulonglong), ('free', ctypes.c_ulonglong), ('used', ctypes.c_ulonglong)]


class NvmlUtilization(ctypes.Structure):
    _fields_ = [('gpu', ctypes.c_uint), ('memory', ctypes.c_uint)]


class NvmlProcessInfo(ctypes.Structure):
    # nvmlProcessInfo_t as used by nvmlDeviceGetComputeRunningProcesses_v3
    _fields_ = [('pid', ctypes.c_uint), ('usedGpuMemory', ctypes.c_ulonglong),
                ('gpuInstanceId', ctypes.c_uint), ('computeInstanceId', ctypes.c_uint)]


def load_nvml(library=NVML_LIBRARY):
    """Load NVML; raises GpuError when it is not there."""
    try:
        lib = ctypes.CDLL(library)
        lib.nvmlErrorString.restype = ctypes.c_char_p
        return lib
    except (OSError, AttributeError) as exc:
        raise GpuError('NVML library %s could not be loaded: %s' % (library, exc))


class NvmlBackend(GpuBackend):
    """NVML through ctypes; ``lib`` is the loaded library (tests pass a fake with the same functions)."""

    name = 'nvml'

    def __init__(self, lib):
        self.lib = lib

    def _check(self, rc, what, optional=False):
        if rc == NVML_SUCCESS:
            return True
        if optional and rc == NVML_ERROR_NOT_SUPPORTED:
            return False
        message = what
        try:
            message = '%s: %s' % (what, self.lib.nvmlErrorString(rc).decode('utf-8', 'replace'))
        except Exception:  # an old or fake library without nvmlErrorString
            message = '%s: NVML error %d' % (what, rc)
        raise GpuError(message, rc=rc)

    def _string(self, func, *args):
        buf = ctypes.create_string_buffer(96)
        self._check(func(*(args + (buf, ctypes.c_uint(96)))), func.__name__ if hasattr(func, '__name__') else 'NVML')
        return buf.value.decode('utf-8', 'replace')

    def read(self):
        lib = self.lib
        self._check(lib.nvmlInit_v2(), 'nvmlInit_v2')
        try:
            driver = self._string(lib.nvmlSystemGetDriverVersion)
            count = ctypes.c_uint(0)
            self._check(lib.nvmlDeviceGetCount_v2(ctypes.byref(count)), 'nvmlDeviceGetCount_v2')
            gpus = []
            for index in range(count.value):
                handle = ctypes.c_void_p()
                self._check(lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)),
                            'nvmlDeviceGetHandleByIndex_v2(%d)' % index)
                gpus.append(self._device(index, handle))
            return gpus, driver
        finally:
            lib.nvmlShutdown()

    def _device(self, index, handle):
        lib = self.lib
        memory = NvmlMemory()
        has_memory = self._check(lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)),
                                 'nvmlDeviceGetMemoryInfo', optional=True)
        util = NvmlUtilization()
        has_util = self._check(lib.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(util)),
                               'nvmlDeviceGetUtilizationRates', optional=True)
        temp = ctypes.c_uint(0)
        has_temp = self._check(lib.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU, ctypes.byref(temp)),
                               'nvmlDeviceGetTemperature', optional=True)
        current, pending = ctypes.c_uint(0), ctypes.c_uint(0)
        has_mig = self._check(lib.nvmlDeviceGetMigMode(handle, ctypes.byref(current), ctypes.byref(pending)),
                              'nvmlDeviceGetMigMode', optional=True)
        return {
            'index': index,
            'uuid': self._string(lib.nvmlDeviceGetUUID, handle),
            'name': self._string(lib.nvmlDeviceGetName, handle),
            'memory_total_mb': memory.total // MIB if has_memory else None,
            'memory_used_mb': memory.used // MIB if has_memory else None,
            'memory_free_mb': memory.free // MIB if has_memory else None,
            'utilization_gpu': util.gpu if has_util else None,
            'temperature_c': temp.value if has_temp else None,
            'mig_mode': ('Enabled' if current.value else 'Disabled') if has_mig else None,
            'processes': self._processes(handle),
        }

    def _processes(self, handle):
        lib = self.lib
        count = ctypes.c_uint(0)
        rc = lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), None)
        if rc == NVML_SUCCESS and count.value == 0:
            return []
        if rc not in (NVML_SUCCESS, NVML_ERROR_INSUFFICIENT_SIZE):
            self._check(rc, 'nvmlDeviceGetComputeRunningProcesses_v3', optional=True)
            return []
        # Processes may start between the two calls: leave room.
        count = ctypes.c_uint(count.value + 8)
        infos = (NvmlProcessInfo * count.value)()
        self._check(lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), infos),
                    'nvmlDeviceGetComputeRunningProcesses_v3')
        processes = []
        for info in infos[:count.value]:
            name = ctypes.create_string_buffer(256)
            if lib.nvmlSystemGetProcessName(ctypes.c_uint(info.pid), name, ctypes.c_uint(256)) == NVML_SUCCESS:
                pname = os.path.basename(name.value.decode('utf-8', 'replace'))
            else:
                pname = None
            used = info.usedGpuMemory
            # NVML reports "not available" as the largest unsigned value.
            processes.append({'pid': info.pid, 'name': pname,
                              'used_memory_mb': None if used >= (1 << 63) else used // MIB})
        return processes


def create_backend(backend, run_command, nvidia_smi_path=None, which=None, nvml_loader=load_nvml):
    """The one factory. ``auto``: NVML when it loads, else nvidia-smi when found, else an error
    saying neither is there. ``which(name)`` finds an executable (module.get_bin_path)."""
    errors = []
    if backend in ('auto', 'nvml'):
        try:
            return NvmlBackend(nvml_loader())
        except GpuError as exc:
            if backend == 'nvml':
                raise
            errors.append(str(exc))
    if backend in ('auto', 'nvidia-smi'):
        path = nvidia_smi_path or (which('nvidia-smi') if which else None)
        if path and (not os.path.isabs(path) or os.access(path, os.X_OK)):
            return NvidiaSmiBackend(run_command, path)
        errors.append('nvidia-smi not found%s' % (' at %s' % nvidia_smi_path if nvidia_smi_path else ' on PATH'))
        raise GpuError('no NVIDIA GPU tooling on this node: %s. Install the NVIDIA driver (it ships both), '
                       'or set nvidia_smi_path.' % '; '.join(errors))
    raise GpuError('backend must be auto, nvml or nvidia-smi, not %r' % (backend,))


def gpu_facts(backend, min_free_memory_mb=0, max_utilization=10, require_no_processes=True):
    """Read the GPUs and summarise them as ``gpu_info`` returns them."""
    gpus, driver = backend.read()
    free = select_free(gpus, min_free_memory_mb, max_utilization, require_no_processes)
    return {'gpus': gpus, 'gpu_count': len(gpus), 'free_gpus': free, 'free_gpu_count': len(free),
            'driver_version': driver, 'backend': backend.name}
