#!/usr/bin/env bash
# galaxy-importer (what Galaxy / Automation Hub run on an upload) on the collection tarball as built for users:
# clean means it completes and reports no WARNING or ERROR at all. Its own virtualenv (.venv-importer), as its pins
# (attrs, flake8, ansible-lint) are not the test suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
IMPORTER_VERSION=0.4.44
VENV=.venv-importer
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import galaxy_importer" 2>/dev/null; then
  echo "importer: creating $VENV with galaxy-importer==$IMPORTER_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "galaxy-importer==$IMPORTER_VERSION"
fi
# The collection's declared dependency (galaxy.yml: awx.awx), where the importer's ansible-lint finds it, as it
# would be installed beside the collection.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f "$site/ansible_collections/awx/awx/MANIFEST.json" ]; then
  mkdir -p "$site/ansible_collections/awx"
  cp -r .collections/ansible_collections/awx/awx "$site/ansible_collections/awx/"
fi
out=build/importer
rm -rf "$out" && mkdir -p "$out"
.venv/bin/ansible-galaxy collection build --output-path "$out" . >/dev/null
tarball=$(ls "$out"/spot-migration-*.tar.gz)
GALAXY_IMPORTER_CONFIG=$PWD/hacking/galaxy-importer.cfg PATH="$PWD/$VENV/bin:$PATH" \
  "$VENV/bin/python" -m galaxy_importer.main "$tarball" > "$out/importer.log" 2>&1 || {
  tail -40 "$out/importer.log"; echo "importer: galaxy-importer failed on $tarball" >&2; exit 1; }
if grep -E "^(WARNING|ERROR)" "$out/importer.log"; then
  echo "importer: galaxy-importer reported the problems above on $tarball (full log: $out/importer.log)" >&2
  exit 1
fi
grep -q "Importer processing completed successfully" "$out/importer.log" || {
  tail -20 "$out/importer.log"; echo "importer: no success line from galaxy-importer" >&2; exit 1; }
echo "importer: galaxy-importer $IMPORTER_VERSION passes on $(basename "$tarball"), no warnings"
