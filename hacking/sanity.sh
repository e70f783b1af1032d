#!/usr/bin/env bash
# ansible-test sanity on what the collection ships: copy it (minus build_ignore) under
# build/sanity/ansible_collections/spot/migration and test there, in ansible-test's own venvs.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=build/sanity/ansible_collections/spot/migration
rm -rf build/sanity
mkdir -p "$dest"
# Tracked and new files, as git sees them, without what galaxy.yml build_ignores.
git ls-files -co --exclude-standard -z \
  | grep -zv -E '^(\.ci|src|bench|hacking|\.collections)/|^(pyproject\.toml|Makefile)$' \
  | xargs -0 -I{} cp --parents {} "$dest"/
cd "$dest"
git init -q . && git add -A >/dev/null
exec ../../../../../.venv/bin/ansible-test sanity --venv --python 3.11 --color no "$@"
