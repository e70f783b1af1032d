"""spot.migration controller package: the watcher, simulators, the local fleet and the demo."""

from __future__ import annotations

from pathlib import Path

__version__ = "1.1.0"


def collections_path() -> Path:
    """The collections path entry (the directory holding ``ansible_collections/``) where Ansible finds the
    spot.migration collection: ANSIBLE_COLLECTIONS_PATH or the configured collections paths, never a path relative
    to this package. Raises :class:`spot_migration.collection.CollectionError` when it is missing or another
    version."""
    from .collection import find

    return find().base


def collections_env() -> str:
    """ANSIBLE_COLLECTIONS_PATH for the playbooks the controller runs: the user's collection paths, the one holding
    spot.migration first (ansible-runner runs elsewhere, where the user's ansible.cfg is not read)."""
    from .collection import ansible_collections_path, find

    return ansible_collections_path(find())


def module_utils(name: str):
    """Import one of the collection's ``plugins/module_utils`` files (the code the nodes run too), so the
    controller and the nodes share one implementation of notices, signing and placement."""
    import importlib
    import sys

    path = str(collections_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(f"ansible_collections.spot.migration.plugins.module_utils.{name}")
