"""Build the reference trainer's container image locally, with no registry: a minimal rootfs
(busybox, a Python interpreter with its standard library and shared libraries, the trainer)
turned into an image with ``podman import`` (or ``docker import``)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

TRAINER = Path(__file__).with_name("trainer.py")
DEFAULT_TAG = "localhost/spot-migration/trainer"
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "ensurepip", "lib2to3", "site-packages", "dist-packages",
             "__pycache__", "pydoc_data", "turtledemo", "venv", "config-3.11-x86_64-linux-gnu"}
BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")


class ImageError(RuntimeError):
    """The image could not be built; the message says what was missing."""


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def _libs(binary: str) -> set[str]:
    out = _run(["ldd", binary]).stdout
    libs = set()
    for line in out.splitlines():
        parts = line.split()
        for part in parts:
            if part.startswith("/") and os.path.exists(part):
                libs.add(part)
    return libs


def _pick_python() -> str:
    for candidate in ("/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and os.path.exists(candidate):
            return os.path.realpath(candidate)
    raise ImageError("no python3 interpreter to put into the image")


def _add_path(tar: tarfile.TarFile, path: str, seen: set[str]) -> None:
    """Add ``path`` at the same absolute location inside the image; a symlink comes with its target."""
    arcname = path.lstrip("/")
    if arcname in seen:
        return
    seen.add(arcname)
    real = os.path.realpath(path)
    if real != os.path.abspath(path):
        _add_path(tar, real, seen)
        link = tarfile.TarInfo(arcname)
        link.type = tarfile.SYMTYPE
        link.linkname = real
        tar.addfile(link)
        return
    tar.add(real, arcname=arcname, recursive=False)


def build_rootfs(dest: Path, python: str | None = None) -> str:
    """Write the rootfs tarball to ``dest``; returns the interpreter path used inside."""
    python = python or _pick_python()
    busybox = next((b for b in BUSYBOX if os.path.exists(b)), None)
    if busybox is None:
        raise ImageError("busybox (static) is not installed: apt-get install busybox-static")
    stdlib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"]).stdout.strip()
    if not stdlib:
        raise ImageError(f"{python} did not say where its standard library is")
    libs = _libs(python)
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in filenames:
            full = os.path.join(dirpath, name)
            files.append(full)
            if name.endswith(".so"):
                libs |= _libs(full)
    with tarfile.open(dest, "w") as tar:
        for directory in ("bin", "tmp", "opt/spot", "usr/local/bin", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep", "ls", "cat", "kill", "ps", "mkdir", "rm", "mv", "echo", "env", "true"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        seen: set[str] = set()
        _add_path(tar, python, seen)
        for lib in sorted(libs):
            _add_path(tar, lib, seen)
        for full in files:
            _add_path(tar, full, seen)
        tar.add(str(TRAINER), arcname="opt/spot/trainer.py")
        script = f'#!/bin/sh\nexec {python} /opt/spot/trainer.py "$@"\n'.encode()
        info = tarfile.TarInfo("usr/local/bin/spot-trainer")
        info.mode = 0o755
        info.size = len(script)
        tar.addfile(info, io.BytesIO(script))
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return python


def image_tag(python: str | None = None) -> str:
    """The tag changes whenever the trainer or the interpreter does, so a stale image is never reused."""
    python = python or _pick_python()
    digest = hashlib.sha256(TRAINER.read_bytes() + python.encode()).hexdigest()[:12]
    return f"{DEFAULT_TAG}:{digest}"


def build_image(cli: str = "podman", tag: str | None = None, python: str | None = None, force: bool = False,
                env: dict[str, str] | None = None) -> str:
    """Build (or reuse) the trainer image; returns its tag. ``env`` selects another image store
    (CONTAINERS_STORAGE_CONF), as the local fleet does for its shared one."""
    if shutil.which(cli) is None:
        raise ImageError(f"{cli} is not installed")
    python = python or _pick_python()
    tag = tag or image_tag(python)
    env = dict(os.environ, **(env or {}))
    if not force and _run([cli, "image", "exists", tag], env=env).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="spot-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        build_rootfs(rootfs, python)
        result = _run([cli, "import", "--change", 'ENTRYPOINT ["/usr/local/bin/spot-trainer"]',
                       "--change", "WORKDIR /tmp", str(rootfs), tag], env=env)
        if result.returncode != 0:
            raise ImageError(f"{cli} import failed (rc {result.returncode}): {result.stderr.strip()}")
    return tag
