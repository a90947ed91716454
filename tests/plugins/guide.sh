#!/usr/bin/env bash
# Follows plugins/README.md verbatim: runs every ```sh block of it, in order, as one script from
# the repository root, against the server at $PALAVER_URL that watches $PLUGINS_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${PALAVER_URL:?set PALAVER_URL to a running server}" "${PLUGINS_DIR:?set PLUGINS_DIR to the folder it watches}"
script=$(awk '/^```sh$/ {inside=1; next} /^```$/ {inside=0} inside' plugins/README.md)
[ -n "$script" ] || { echo "no sh blocks in plugins/README.md"; exit 1; }
# The guide's `mktemp -d` work folder (seven plugin builds, over 1 GB) lands in a scratch TMPDIR
# that goes away with this script, so repeated CI runs do not fill the disk.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '%s\n' "$script" | TMPDIR="$scratch" bash -euxo pipefail
echo "plugins/README.md: every step ran"
