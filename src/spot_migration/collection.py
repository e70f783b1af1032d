"""Where the spot.migration collection is: found the way Ansible finds collections, never relative to this file.

The controller (this package, installed from its wheel) and the collection (installed from its tarball or Galaxy)
are installed separately. Everything the controller runs (playbooks through ansible-runner, the module_utils the
watcher shares with the nodes) comes from the collection Ansible itself would load: the first
``ansible_collections/spot/migration`` on ``ANSIBLE_COLLECTIONS_PATH`` or, when that is unset, on the
``collections_path`` of the ansible.cfg in effect (default ``~/.ansible/collections:/usr/share/ansible/collections``),
then on Python's path as ansible-core scans it. Its version must be this package's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__

NAMESPACE, NAME = "spot", "migration"


class CollectionError(RuntimeError):
    """spot.migration is not installed where Ansible looks, or is another version than this controller."""


@dataclass(frozen=True)
class Collection:
    base: Path          # the collections path entry (the directory holding ansible_collections/)
    root: Path          # .../ansible_collections/spot/migration
    version: str
    search_path: tuple[str, ...]  # what Ansible searches, in order (passed on to the playbooks the watcher runs)


def search_path(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The collection paths Ansible uses: ANSIBLE_COLLECTIONS_PATH when set, else the configured ones."""
    env = os.environ if env is None else env
    value = env.get("ANSIBLE_COLLECTIONS_PATH") or env.get("ANSIBLE_COLLECTIONS_PATHS")
    if value:
        paths = [p for p in value.split(os.pathsep) if p]
    else:
        from ansible import constants  # reads the ansible.cfg in effect, renders the defaults

        paths = list(constants.COLLECTIONS_PATHS or [])
    return tuple(str(Path(p).expanduser()) for p in paths)


def _scan_sys_path(env: dict[str, str] | None) -> bool:
    from ansible.module_utils.parsing.convert_bool import boolean

    value = (os.environ if env is None else env).get("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH")
    return value is None or boolean(value, strict=False)


def _version(root: Path) -> str | None:
    manifest = root / "MANIFEST.json"
    if manifest.is_file():  # an installed collection (ansible-galaxy collection install)
        try:
            return str(json.loads(manifest.read_text())["collection_info"]["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    galaxy = root / "galaxy.yml"
    if galaxy.is_file():  # a source tree put on the path (a checkout, ansible-galaxy collection install --editable)
        import yaml

        try:
            return str((yaml.safe_load(galaxy.read_text()) or {}).get("version"))
        except (OSError, yaml.YAMLError):
            return None
    return None


def find(env: dict[str, str] | None = None, expect_version: str | None = __version__) -> Collection:
    """The spot.migration collection Ansible would load; CollectionError naming where it looked otherwise."""
    paths = search_path(env)
    scan = [*paths, *(p for p in sys.path if p and p not in paths and _scan_sys_path(env))]
    for entry in scan:
        root = Path(entry) / "ansible_collections" / NAMESPACE / NAME
        if not (root / "plugins").is_dir():
            continue
        version = _version(root)
        if expect_version and version != expect_version:
            raise CollectionError(
                f"{NAMESPACE}.{NAME} at {root} is version {version or 'unknown'}, this controller (spot-migration "
                f"{__version__}) needs {expect_version}: install the matching collection "
                f"(ansible-galaxy collection install --force {NAMESPACE}-{NAME}-{expect_version}.tar.gz)")
        return Collection(Path(entry), root, version or "", paths)
    raise CollectionError(
        f"the collection {NAMESPACE}.{NAME} is not installed where Ansible looks "
        f"(collections paths: {os.pathsep.join(paths) or 'none'}; ANSIBLE_COLLECTIONS_PATH "
        f"{'is ' + repr(os.environ.get('ANSIBLE_COLLECTIONS_PATH')) if os.environ.get('ANSIBLE_COLLECTIONS_PATH') else 'is unset'}): "
        f"install it with ansible-galaxy collection install {NAMESPACE}-{NAME}-{__version__}.tar.gz "
        f"(or -p DIR and ANSIBLE_COLLECTIONS_PATH=DIR)")


def ansible_collections_path(collection: Collection) -> str:
    """ANSIBLE_COLLECTIONS_PATH for a playbook run the controller starts: what the user configured, and the entry
    the collection was found in first (ansible-runner runs in its own directory, where the user's ansible.cfg is
    not read)."""
    entries = [str(collection.base), *(p for p in collection.search_path if p != str(collection.base))]
    return os.pathsep.join(entries)
