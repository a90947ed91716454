#!/usr/bin/env bash
# Builds py_word_filter.wasm (a WebAssembly component for the world `moderator`) beside this script.
#
#   ./build.sh                         # venv in .venv/ here
#   PY_WORD_FILTER_VENV=/tmp/venv ./build.sh  # or anywhere else
#
# Needs python3 (3.10+, with venv) and PyPI. The first run creates the venv and installs the
# pinned componentize-py; later runs reuse it (pip only checks the pin).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PY_WORD_FILTER_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/pip" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$here/requirements.txt"

# No --stub-wasi: with it every WASI interface becomes a core module of its own, 38 core
# instances in all, past the host's cap of 32 per call ("instance count too high at 33").
# Without it the component has 14 and imports WASI 0.2 from the host, which links it with an
# empty context: no files, environment or network; print() output goes to the server log.
cd "$here"
"$venv/bin/componentize-py" -d ../../wit -w moderator componentize app -o py_word_filter.wasm
echo "built $here/py_word_filter.wasm ($(wc -c <py_word_filter.wasm) bytes)"
