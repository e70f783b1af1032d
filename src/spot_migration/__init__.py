"""spot.migration controller package: the watcher, simulators, the local fleet and the demo."""

from __future__ import annotations

from pathlib import Path

__version__ = "1.0.0"


def collection_root() -> Path:
    """The collection tree this package was installed from (the repository root)."""
    return Path(__file__).resolve().parents[2]


def collections_path() -> Path:
    """A directory usable as ANSIBLE_COLLECTIONS_PATH that contains spot.migration.

    In a checkout this is ``.collections/`` with a link to the repository root,
    created on demand, so playbooks run against the working tree.
    """
    root = collection_root()
    base = root / ".collections"
    link = base / "ansible_collections" / "spot" / "migration"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to("../../..", target_is_directory=True)
    return base


def module_utils(name: str):
    """Import one of the collection's ``plugins/module_utils`` files (the code the nodes run too), so the
    controller and the nodes share one implementation of notices, signing and placement."""
    import importlib
    import sys

    path = str(collections_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(f"ansible_collections.spot.migration.plugins.module_utils.{name}")
