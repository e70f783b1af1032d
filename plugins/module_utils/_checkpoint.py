# -*- coding: utf-8 -*-
# Copyright (c) spot.migration contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Is a checkpoint complete? Find the newest complete one; write and verify sha256 manifests.

Standard library only, no Ansible imports (the agent and the watcher share it). Nothing here
ever unpickles or imports a training framework: each format's completeness rule reads only
structure (safetensors header and size, the zip central directory torch.save writes, commit
markers). Every candidate passed over is reported with the reason.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import re
import struct
import time
import zipfile

from ._common import write_json_atomic

__metaclass__ = type

FORMATS = ('safetensors', 'torch', 'dcp', 'hf', 'deepspeed', 'orbax', 'generic')
MANIFEST_NAME = '.spot-manifest.json'
MANIFEST_VERSION = 1
TORCH_SUFFIXES = ('.pt', '.pth', '.bin', '.ckpt', '.tar')
TEMP_SUFFIXES = ('.tmp', '.partial', '~', '.temp', '.incomplete', '.lock')
ORBAX_TMP = '.orbax-checkpoint-tmp-'
HASH_CHUNK = 4 * 1024 * 1024
ZERO_BYTE_MARKERS = ('commit_success.txt', '_SUCCESS', '.gitkeep')
_STEP_RE = re.compile(r'(?:global_step|checkpoint|ckpt|step|iter|epoch)[-_]?(\d+)', re.IGNORECASE)
_LAST_NUMBER_RE = re.compile(r'(\d+)(?!.*\d)')


class CheckpointError(Exception):
    """No usable checkpoint, or a manifest check failed; ``details`` travel with the failure."""

    def __init__(self, message, **details):
        super(CheckpointError, self).__init__(message)
        self.details = details


class Incomplete(Exception):
    """One candidate is not a complete checkpoint; the message is the reason."""


def is_temp_name(name):
    """Names writers use while a file is in progress."""
    lowered = name.lower()
    if lowered.endswith(TEMP_SUFFIXES) or ORBAX_TMP in lowered:
        return True
    return '.tmp.' in lowered or lowered.startswith('.tmp') or lowered.startswith('tmp_') or '.partial.' in lowered


def step_from_name(name):
    match = _STEP_RE.search(name)
    if match:
        return int(match.group(1))
    base = name.split('.')[0]
    return int(base) if base.isdigit() else None


def _walk(root):
    """Files under ``root`` (a file or a directory): list of (relative path, absolute path, stat)."""
    if os.path.isfile(root):
        return [(os.path.basename(root), root, os.stat(root))]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                found.append((os.path.relpath(full, root), full, os.stat(full)))
            except OSError:
                continue  # removed while we looked
    return found


# ---------------------------------------------------------------------------- per-format rules

def check_safetensors(path, size=None):
    """8-byte little-endian header length, a JSON header, and file size = 8 + header + largest end offset.
    Returns the ``__metadata__`` dict."""
    size = os.path.getsize(path) if size is None else size
    if size < 8:
        raise Incomplete('safetensors file of %d bytes has no header' % size)
    with open(path, 'rb') as handle:
        (header_len,) = struct.unpack('<Q', handle.read(8))
        if header_len > size - 8 or header_len > 100 * 1024 * 1024:
            raise Incomplete('safetensors header claims %d bytes but the file has %d' % (header_len, size))
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode('utf-8'))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Incomplete('safetensors header is not JSON: %s' % exc)
    if not isinstance(header, dict):
        raise Incomplete('safetensors header is not an object')
    end = 0
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        offsets = entry.get('data_offsets') if isinstance(entry, dict) else None
        well_formed = isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        if not well_formed or offsets[0] > offsets[1]:
            raise Incomplete('safetensors tensor %r has bad data_offsets %r' % (name, offsets))
        end = max(end, offsets[1])
    expected = 8 + header_len + end
    if size != expected:
        raise Incomplete('truncated: safetensors header needs %d bytes, file has %d' % (expected, size))
    meta = header.get('__metadata__')
    return meta if isinstance(meta, dict) else {}


def check_torch_zip(path, size=None):
    """torch.save's zip: the end-of-central-directory record and the central directory parse, every
    entry's local header is where the directory says and inside the file, and ``data.pkl`` is there.
    Nothing is unpickled."""
    size = os.path.getsize(path) if size is None else size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            with open(path, 'rb') as handle:
                for info in infos:
                    handle.seek(info.header_offset)
                    local = handle.read(30)
                    if len(local) < 30 or local[:4] != b'PK\x03\x04':
                        raise Incomplete('zip entry %r has no local header at offset %d'
                                         % (info.filename, info.header_offset))
                    name_len, extra_len = struct.unpack('<HH', local[26:30])
                    if info.header_offset + 30 + name_len + extra_len + info.compress_size > size:
                        raise Incomplete('zip entry %r runs past the end of the file' % info.filename)
    except zipfile.BadZipFile as exc:
        raise Incomplete('not a complete zip archive (torch.save writes one): %s' % exc)
    except (OSError, ValueError, struct.error) as exc:
        raise Incomplete('zip archive does not parse: %s' % exc)
    if not any(i.filename.endswith('data.pkl') for i in infos):
        raise Incomplete('zip archive has no data.pkl: not a torch.save checkpoint')
    return [i.filename for i in infos]


def _check_weight_file(path, size):
    if path.endswith('.safetensors'):
        return check_safetensors(path, size)
    with open(path, 'rb') as handle:
        magic = handle.read(4)
    if magic != b'PK\x03\x04':
        raise Incomplete('%s is not a torch.save zip archive (legacy pickle files cannot be verified)'
                         % os.path.basename(path))
    check_torch_zip(path, size)
    return {}


# ---------------------------------------------------------------------------- candidates

class Candidate:
    """One thing that may be a checkpoint: a file or a directory under the search path."""

    def __init__(self, path, fmt=None):
        self.path = path
        self.name = os.path.basename(path.rstrip(os.sep))
        self.format = fmt
        self.step = None
        self.files = []
        self.mtime = 0.0
        self.size = 0
        self.uncommitted = False
        self.scan_error = None

    def scan(self):
        self.files = _walk(self.path)
        self.mtime = max([st.st_mtime for _rel, _full, st in self.files] or [os.stat(self.path).st_mtime])
        self.size = sum(st.st_size for _rel, _full, st in self.files)

    def result(self):
        return {'checkpoint': os.path.abspath(self.path), 'format': self.format, 'step': self.step,
                'mtime': self.mtime, 'size_bytes': self.size,
                'files': [rel for rel, _full, _st in self.files if rel != MANIFEST_NAME]}


def detect_format(path):
    """The format of one candidate path, or None when it is none we know."""
    name = os.path.basename(path.rstrip(os.sep))
    if os.path.isfile(path):
        if name.endswith('.safetensors'):
            return 'safetensors'
        if name.endswith(TORCH_SUFFIXES):
            return 'torch'
        return None
    if not os.path.isdir(path):
        return None
    try:
        entries = set(os.listdir(path))
    except OSError:
        return None
    if 'latest' in entries and os.path.isfile(os.path.join(path, 'latest')):
        return 'deepspeed'
    if '.metadata' in entries or any(e.endswith('.distcp') for e in entries):
        return 'dcp'
    if 'trainer_state.json' in entries or re.match(r'^checkpoint-\d+$', name):
        return 'hf'
    if (ORBAX_TMP in name or entries & {'_CHECKPOINT_METADATA', 'commit_success.txt', '_METADATA', '_sharding'}):
        return 'orbax'
    if MANIFEST_NAME in entries:
        return 'generic'
    return None


def _check_common(cand, stable_for, now):
    if is_temp_name(cand.name):
        raise Incomplete('temporary name: a writer has not finished it')
    if not cand.files:
        raise Incomplete('empty: no files')
    for rel, _full, st in cand.files:
        base = os.path.basename(rel)
        if rel != MANIFEST_NAME and is_temp_name(base):
            raise Incomplete('contains a temporary file %r' % rel)
        if st.st_size == 0 and base not in ZERO_BYTE_MARKERS:
            raise Incomplete('zero-byte file %r' % rel)
        if stable_for and now - st.st_mtime < stable_for:
            raise Incomplete('still being written: %r changed %.1f s ago (stable_for %s s)'
                             % (rel, max(0.0, now - st.st_mtime), stable_for))


def _check_dcp(cand):
    by_name = dict((rel, st) for rel, _full, st in cand.files)
    meta = by_name.get('.metadata')
    if meta is None:
        raise Incomplete('no .metadata: torch.distributed.checkpoint writes it last, so the save did not finish')
    if meta.st_size == 0:
        raise Incomplete('.metadata is empty')
    data = [(rel, st) for rel, st in by_name.items() if rel.endswith('.distcp')]
    if not data:
        raise Incomplete('no .distcp data files beside .metadata')
    for rel, st in data:
        if st.st_size == 0:
            raise Incomplete('zero-byte data file %r' % rel)
        # Data files are finished before .metadata is written (allow 2 s of clock granularity).
        if st.st_mtime > meta.st_mtime + 2:
            raise Incomplete('%r was written after .metadata: a newer save is in progress' % rel)


def _check_hf(cand):
    state_path = os.path.join(cand.path, 'trainer_state.json')
    try:
        with open(state_path) as handle:
            state = json.load(handle)
    except (IOError, OSError):
        raise Incomplete('no trainer_state.json: the Trainer writes it after the weights')
    except ValueError as exc:
        raise Incomplete('trainer_state.json does not parse: %s' % exc)
    if not isinstance(state, dict):
        raise Incomplete('trainer_state.json is not an object')
    if isinstance(state.get('global_step'), int):
        cand.step = state['global_step']
    files = dict((rel, st) for rel, _full, st in cand.files)
    weights = [rel for rel in files if rel.endswith('.safetensors') or rel.endswith('.bin')]
    index_names = [rel for rel in files if rel.endswith('.index.json')]
    for index_name in index_names:
        try:
            with open(os.path.join(cand.path, index_name)) as handle:
                index = json.load(handle)
            shards = set(index['weight_map'].values())
        except (ValueError, KeyError, TypeError, AttributeError, IOError, OSError) as exc:
            raise Incomplete('%s does not parse: %s' % (index_name, exc))
        missing = sorted(s for s in shards if s not in files)
        if missing:
            raise Incomplete('%s names missing shards: %s' % (index_name, ', '.join(missing)))
    if not weights:
        raise Incomplete('no weight files (*.safetensors or *.bin)')
    for rel in weights:
        if rel.endswith('.bin') and 'optimizer' not in rel and 'training_args' not in rel or rel.endswith('.safetensors'):
            try:
                _check_weight_file(os.path.join(cand.path, rel), files[rel].st_size)
            except Incomplete as exc:
                raise Incomplete('%s: %s' % (rel, exc))


def _check_orbax(cand, siblings_commit):
    if siblings_commit and not os.path.exists(os.path.join(cand.path, 'commit_success.txt')):
        raise Incomplete('no commit_success.txt while other steps have one: not committed')


def _check_generic(cand, keep_step=False):
    manifest = read_manifest(cand.path)
    if manifest is None:
        raise Incomplete('no %s' % MANIFEST_NAME)
    sizes = dict((rel, st.st_size) for rel, _full, st in cand.files if rel != MANIFEST_NAME)
    for rel, entry in manifest['files'].items():
        if rel not in sizes:
            raise Incomplete('file %r in the manifest is missing' % rel)
        if sizes[rel] != entry.get('size'):
            raise Incomplete('file %r has %d bytes, the manifest says %s' % (rel, sizes[rel], entry.get('size')))
    if isinstance(manifest.get('step'), int) and not (keep_step and cand.step is not None):
        cand.step = manifest['step']


def check_candidate(cand, stable_for=0.0, now=None, siblings_commit=False):
    """Raise Incomplete with the reason unless ``cand`` is a complete checkpoint of its format."""
    now = time.time() if now is None else now
    _check_common(cand, stable_for, now)
    if cand.format is None:
        raise Incomplete('not a checkpoint format spot.migration recognises')
    cand.step = step_from_name(cand.name)
    if cand.format == 'deepspeed':
        _check_deepspeed(cand)
    elif cand.format == 'safetensors':
        meta = check_safetensors(cand.path, cand.size)
        step = meta.get('step')
        if isinstance(step, str) and step.isdigit():
            cand.step = int(step)
    elif cand.format == 'torch':
        _check_weight_file(cand.path, cand.size)
    elif cand.format == 'dcp':
        _check_dcp(cand)
    elif cand.format == 'hf':
        _check_hf(cand)
    elif cand.format == 'orbax':
        _check_orbax(cand, siblings_commit)
    elif cand.format == 'generic':
        _check_generic(cand)
    if cand.format != 'generic' and os.path.isdir(cand.path) and os.path.exists(os.path.join(cand.path, MANIFEST_NAME)):
        # A sealed checkpoint must still match its manifest's sizes.
        _check_generic(cand, keep_step=True)


def _deepspeed_candidates(root):
    """DeepSpeed: ``latest`` names the committed tag; other tag directories are saves in progress
    (or superseded ones)."""
    try:
        with open(os.path.join(root, 'latest')) as handle:
            tag = handle.read().strip()
    except (IOError, OSError) as exc:
        raise CheckpointError('cannot read %s/latest: %s' % (root, exc), rejected=[])
    committed = os.path.join(root, tag)
    cands, rejected = [], []
    if not tag or os.sep in tag or not os.path.isdir(committed):
        rejected.append((committed, 'the tag %r named by latest is not a directory' % tag))
    for name in sorted(os.listdir(root)):
        full = os.path.join(root, name)
        if os.path.isdir(full):
            cand = Candidate(full, 'deepspeed')
            cand.uncommitted = name != tag
            cands.append(cand)
    return cands, rejected


def _check_deepspeed(cand):
    if cand.uncommitted:
        raise Incomplete('not named by latest: a save in progress, or superseded')
    cand.step = step_from_name(cand.name)
    for rel, full, st in cand.files:
        if rel.endswith('.pt'):
            try:
                _check_weight_file(full, st.st_size)
            except Incomplete as exc:
                raise Incomplete('%s: %s' % (rel, exc))


def _candidates(path, fmt):
    """What under ``path`` may be a checkpoint: recognised files and directories, entries with a writer's
    temporary name (saves in progress), and numbered directories. Logs and other files are not."""
    root_format = detect_format(path) if os.path.isdir(path) else None
    if fmt == 'deepspeed' or (fmt == 'auto' and root_format == 'deepspeed'):
        return _deepspeed_candidates(path)
    if os.path.isfile(path):
        return [Candidate(path, fmt if fmt != 'auto' else detect_format(path))], []
    entries = sorted(os.listdir(path))
    children = [(name, os.path.join(path, name)) for name in entries if not name.endswith(MANIFEST_NAME)]
    if root_format is not None and fmt in ('auto', root_format) and not any(detect_format(f) for _name, f in children):
        return [Candidate(path, root_format)], []  # the path is itself one checkpoint
    cands = []
    for name, full in children:
        found = detect_format(full)
        if fmt != 'auto' and found is not None and found != fmt:
            continue
        if found is None and not is_temp_name(name) and not (os.path.isdir(full) and name.isdigit()):
            continue
        cands.append(Candidate(full, found if fmt == 'auto' or found is None else fmt))
    return cands, []


def find_checkpoint(path, fmt='auto', newer_than=None, max_age=None, stable_for=0.0, now=None):
    """Return the newest complete checkpoint under ``path`` (see module docs), with ``rejected``
    listing every newer candidate passed over. Raise CheckpointError when none qualifies."""
    now = time.time() if now is None else now
    if fmt not in ('auto',) + FORMATS:
        raise CheckpointError('format must be auto or one of %s, not %r' % (', '.join(FORMATS), fmt), rejected=[])
    if not os.path.exists(path):
        raise CheckpointError('checkpoint path %s does not exist' % path, rejected=[])
    cands, early = _candidates(path, fmt)
    rejected = [{'path': os.path.abspath(p), 'reason': r, 'format': fmt, 'mtime': None} for p, r in early]
    siblings_commit = any(os.path.exists(os.path.join(c.path, 'commit_success.txt')) for c in cands
                          if os.path.isdir(c.path))
    for cand in cands:
        try:
            cand.scan()
        except OSError as exc:
            cand.scan_error = str(exc)
    cands.sort(key=lambda c: (c.mtime, step_from_name(c.name) or -1), reverse=True)
    for cand in cands:
        if newer_than is not None and cand.mtime <= newer_than:
            break
        if max_age is not None and cand.mtime < now - max_age:
            break
        try:
            if cand.scan_error:
                raise Incomplete('cannot be read: %s' % cand.scan_error)
            check_candidate(cand, stable_for, now, siblings_commit)
        except Incomplete as exc:
            rejected.append({'path': os.path.abspath(cand.path), 'reason': str(exc), 'format': cand.format,
                             'mtime': cand.mtime})
            continue
        result = cand.result()
        result['rejected'] = rejected
        return result
    limits = []
    if newer_than is not None:
        limits.append('newer than %s' % _iso(newer_than))
    if max_age is not None:
        limits.append('at most %s s old' % max_age)
    raise CheckpointError('no complete checkpoint under %s%s (%d candidate(s) rejected)'
                          % (path, ' ' + ' and '.join(limits) if limits else '', len(rejected)), rejected=rejected)


def complete_checkpoints(path, fmt='auto', now=None):
    """Every complete checkpoint under ``path`` (find_checkpoint's judgement of each), newest step first; ``[]`` when
    there is none or ``path`` does not exist."""
    if not os.path.exists(path):
        return []
    now = time.time() if now is None else now
    cands, _early = _candidates(path, fmt)
    siblings_commit = any(os.path.exists(os.path.join(c.path, 'commit_success.txt')) for c in cands
                          if os.path.isdir(c.path))
    out = []
    for cand in cands:
        try:
            cand.scan()
            check_candidate(cand, 0.0, now, siblings_commit)
        except (OSError, Incomplete):
            continue
        out.append(cand.result())
    out.sort(key=lambda r: (r.get('step') if r.get('step') is not None else -1, r.get('mtime') or 0), reverse=True)
    return out


def parse_time(value, what='newer_than'):
    """Epoch seconds (number or numeric string) or ISO 8601 -> epoch seconds; None stays None."""
    if value is None or value == '':
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    from ._notice import NoticeError, parse_iso8601
    try:
        return parse_iso8601(text)
    except NoticeError:
        raise CheckpointError('%s must be epoch seconds or an ISO 8601 time, not %r' % (what, value), rejected=[])


def _iso(epoch):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))


def wait_for_checkpoint(path, wait_timeout=0.0, interval=0.5, monotonic=time.monotonic, sleep=time.sleep, **kwargs):
    """``find_checkpoint`` until one qualifies or ``wait_timeout`` passes; adds ``elapsed``."""
    start = monotonic()
    while True:
        try:
            result = find_checkpoint(path, **kwargs)
            result['elapsed'] = round(monotonic() - start, 3)
            return result
        except CheckpointError as exc:
            left = start + wait_timeout - monotonic()
            if left <= 0:
                exc.details['elapsed'] = round(monotonic() - start, 3)
                if wait_timeout:
                    exc.args = ('%s after waiting %.1f s' % (exc, monotonic() - start),)
                raise
            sleep(min(interval, left))


# ---------------------------------------------------------------------------- manifests

def manifest_path(checkpoint):
    """Directories carry ``<dir>/.spot-manifest.json``; a single-file checkpoint ``<file>.spot-manifest.json``."""
    if os.path.isdir(checkpoint):
        return os.path.join(checkpoint, MANIFEST_NAME)
    return checkpoint + MANIFEST_NAME


def read_manifest(checkpoint):
    path = manifest_path(checkpoint)
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (IOError, OSError):
        return None
    except ValueError as exc:
        raise CheckpointError('manifest %s does not parse: %s' % (path, exc))
    if not isinstance(data, dict) or not isinstance(data.get('files'), dict):
        raise CheckpointError('manifest %s has no "files" object' % path)
    return data


def sha256_file(path, chunk=HASH_CHUNK):
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, 'rb', buffering=0) as handle:
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def hash_files(checkpoint, workers=None):
    """``{relative path: {size, sha256}}`` for every file of the checkpoint but the manifest; files
    are hashed in parallel threads (hashlib releases the GIL on large buffers)."""
    files = [(rel, full, st) for rel, full, st in _walk(checkpoint) if rel != MANIFEST_NAME]
    workers = workers or min(4, os.cpu_count() or 1, max(1, len(files)))
    results = {}
    if workers > 1 and len(files) > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda f: sha256_file(f[1]), files))
    else:
        digests = [sha256_file(full) for _rel, full, _st in files]
    for (rel, _full, st), digest in zip(files, digests):
        results[rel] = {'size': st.st_size, 'sha256': digest}
    return results


def build_manifest(checkpoint, fmt=None, step=None, now=None):
    files = hash_files(checkpoint)
    return {'version': MANIFEST_VERSION, 'algorithm': 'sha256', 'created': _iso(time.time() if now is None else now),
            'checkpoint': os.path.basename(checkpoint.rstrip(os.sep)), 'format': fmt, 'step': step,
            'total_bytes': sum(e['size'] for e in files.values()), 'file_count': len(files), 'files': files}


def write_manifest_atomic(checkpoint, manifest):
    """Write via a temporary name in the same directory and rename: never a partial manifest."""
    return write_json_atomic(manifest_path(checkpoint), manifest, durable=True)


def compare_manifest(expected, actual):
    """Differences between a manifest's files and what is on disk: (missing, extra, mismatched)."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    mismatched = []
    for rel in sorted(set(expected) & set(actual)):
        want, got = expected[rel], actual[rel]
        if want.get('size') != got['size']:
            mismatched.append({'file': rel, 'reason': 'size %d, manifest says %s' % (got['size'], want.get('size'))})
        elif want.get('sha256') != got['sha256']:
            mismatched.append({'file': rel, 'reason': 'sha256 %s, manifest says %s' % (got['sha256'], want.get('sha256'))})
    return missing, extra, mismatched


def seal(checkpoint, check_mode=False, fmt=None, step=None):
    """``state: present``: write the manifest unless an identical one is there. Returns a result dict."""
    if not os.path.exists(checkpoint):
        raise CheckpointError('checkpoint %s does not exist' % checkpoint)
    existing = read_manifest(checkpoint)
    fresh = build_manifest(checkpoint, fmt=fmt, step=step)
    if existing is not None and existing.get('files') == fresh['files'] and existing.get('algorithm') == 'sha256':
        return {'changed': False, 'manifest': manifest_path(checkpoint), 'file_count': fresh['file_count'],
                'total_bytes': fresh['total_bytes'], 'files': fresh['files'], 'diff': None}
    diff = {'before': _summary(existing), 'after': _summary(fresh),
            'before_header': manifest_path(checkpoint), 'after_header': manifest_path(checkpoint)}
    if not check_mode:
        write_manifest_atomic(checkpoint, fresh)
    return {'changed': True, 'manifest': manifest_path(checkpoint), 'file_count': fresh['file_count'],
            'total_bytes': fresh['total_bytes'], 'files': fresh['files'], 'diff': diff}


def _summary(manifest):
    if manifest is None:
        return ''
    return '\n'.join('%s %s %d' % (e.get('sha256'), rel, e.get('size', -1))
                     for rel, e in sorted(manifest['files'].items())) + '\n'


def verify(checkpoint, hashes=None):
    """``state: verified``: every file hashed against the manifest. Raises CheckpointError listing every
    missing, extra and mismatching file; returns what was checked. ``hashes``: ``{relative path: {size, sha256}}``
    computed over these very bytes as they were written (a restore from object storage hashes while it downloads), used
    instead of reading the files again."""
    if not os.path.exists(checkpoint):
        raise CheckpointError('checkpoint %s does not exist' % checkpoint, missing=[], extra=[], mismatched=[])
    manifest = read_manifest(checkpoint)
    if manifest is None:
        raise CheckpointError('checkpoint %s has no manifest %s: seal it first (state=present)'
                              % (checkpoint, manifest_path(checkpoint)), missing=[], extra=[], mismatched=[])
    actual = hash_files(checkpoint) if hashes is None else hashes
    missing, extra, mismatched = compare_manifest(manifest['files'], actual)
    result = {'manifest': manifest_path(checkpoint), 'file_count': len(actual),
              'total_bytes': sum(e['size'] for e in actual.values()), 'missing': missing, 'extra': extra,
              'mismatched': mismatched, 'step': manifest.get('step'), 'format': manifest.get('format')}
    if missing or extra or mismatched:
        problems = (['missing: ' + ', '.join(missing)] if missing else []) + \
                   (['extra: ' + ', '.join(extra)] if extra else []) + \
                   (['mismatched: ' + ', '.join('%s (%s)' % (m['file'], m['reason']) for m in mismatched)]
                    if mismatched else [])
        raise CheckpointError('checkpoint %s does not match its manifest: %s' % (checkpoint, '; '.join(problems)),
                              **dict((k, v) for k, v in result.items() if k != 'manifest'))
    return result
