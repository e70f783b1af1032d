"""An ssh stand-in for transfer tests: the "remote" command runs on this machine; each call is logged."""

from pathlib import Path

FAKE_SSH = r"""#!/bin/sh
# ssh stand-in: options are logged and skipped, the host dropped, the command run here.
echo "$*" >> "$(dirname "$0")/calls.log"
while [ $# -gt 0 ]; do
  case "$1" in
    -O) [ "$2" = exit ] && exit 0; shift 2 ;;
    -o|-c|-F|-p|-i) shift 2 ;;
    -*) shift ;;
    *) shift; break ;;
  esac
done
exec sh -c "$*"
"""


def fake_ssh(directory: Path) -> Path:
    """The stand-in as ``directory/bin/ssh`` (made executable); its calls go to ``directory/bin/calls.log``."""
    bindir = Path(directory) / "bin"
    bindir.mkdir()
    ssh = bindir / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    return ssh
