#!/usr/bin/env bash
# FerretDB, a MongoDB-wire server on SQLite, for the MongoDB tests and benchmarks.
#
#   scripts/ferretdb.sh install       build it once (Go module proxy); prints the binary's path
#   scripts/ferretdb.sh run DIR PORT  run it in the foreground on 127.0.0.1:PORT, data in DIR
#
# Why not plain `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: the module
# zip lacks build/version/version.txt, so that binary panics at start ("Invalid
# build/version/version.txt file content"). We build the same module version from the proxy
# with that one file written in.
set -euo pipefail

version=v1.24.2
module=github.com/FerretDB/FerretDB

install() {
  command -v go >/dev/null || { echo "ferretdb.sh: Go is not installed" >&2; exit 1; }
  local bin
  bin="$(go env GOPATH)/bin/ferretdb-$version"
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    echo "$bin"
    return
  fi
  local src work
  src=$(go mod download -json "$module@$version" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  cp -r "$src" "$work/src"
  chmod -R u+w "$work/src"
  echo "$version" >"$work/src/build/version/version.txt"
  mkdir -p "$(dirname "$bin")"
  (cd "$work/src" && go build -o "$bin" ./cmd/ferretdb) >&2
  echo "$bin"
}

run() {
  local dir=$1 port=$2 bin
  bin=$(install)
  mkdir -p "$dir"
  # --debug-addr=-: its metrics listener has a fixed default port, which a second instance
  # (or anything else on 8088) would collide with. --state-dir: it writes state.json into its
  # working directory otherwise (once, the repository root).
  exec "$bin" --handler=sqlite --sqlite-url="file:$dir/" --state-dir="$dir" \
    --listen-addr="127.0.0.1:$port" --telemetry=disable --debug-addr=- --log-level=warn
}

case "${1:-}" in
  install) install ;;
  run) [ $# -eq 3 ] || { echo "usage: $0 run DIR PORT" >&2; exit 2; }; run "$2" "$3" ;;
  *) echo "usage: $0 install | run DIR PORT" >&2; exit 2 ;;
esac
