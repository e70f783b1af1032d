"""spot.migration controller package: simulators, local fleet, demo and (later) the watcher."""

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
