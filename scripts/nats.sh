#!/usr/bin/env bash
# nats-server, the cluster bus, for the cluster tests and benchmarks.
#
#   scripts/nats.sh install    build it once (Go module proxy, about a minute); prints its path
#   scripts/nats.sh run PORT   run it in the foreground on 127.0.0.1:PORT
set -euo pipefail

version=v2.15.3

install() {
  command -v go >/dev/null || { echo "nats.sh: Go is not installed" >&2; exit 1; }
  local bin
  bin="$(go env GOPATH)/bin/nats-server-$version"
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    echo "$bin"
    return
  fi
  local gobin
  gobin=$(mktemp -d)
  trap 'rm -rf "$gobin"' RETURN
  GOBIN="$gobin" go install "github.com/nats-io/nats-server/v2@$version" >&2
  mkdir -p "$(dirname "$bin")"
  mv "$gobin/nats-server" "$bin"
  echo "$bin"
}

run() {
  local port=$1 bin
  bin=$(install)
  # Core NATS only (no JetStream): Palaver keeps its log in MongoDB. No HTTP monitoring port.
  exec "$bin" --addr 127.0.0.1 --port "$port"
}

case "${1:-}" in
  install) install ;;
  run) [ $# -eq 2 ] || { echo "usage: $0 run PORT" >&2; exit 2; }; run "$2" ;;
  *) echo "usage: $0 install | run PORT" >&2; exit 2 ;;
esac
