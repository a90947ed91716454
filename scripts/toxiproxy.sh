#!/usr/bin/env bash
# Toxiproxy (Shopify), which puts latency, cuts and stalls between each cluster node and NATS or
# MongoDB in the cluster suite's network tests (tests/cluster/network.test.mjs).
#
#   scripts/toxiproxy.sh install    build it once (Go module proxy, about a minute); prints its path
#   scripts/toxiproxy.sh run PORT   run it in the foreground, its API on 127.0.0.1:PORT
set -euo pipefail

version=v2.12.0

install() {
  command -v go >/dev/null || { echo "toxiproxy.sh: Go is not installed" >&2; exit 1; }
  local bin
  bin="$(go env GOPATH)/bin/toxiproxy-server-$version"
  if [ -x "$bin" ] && "$bin" -version >/dev/null 2>&1; then
    echo "$bin"
    return
  fi
  local gobin
  gobin=$(mktemp -d)
  trap 'rm -rf "$gobin"' RETURN
  # The module names the server's package cmd/server (the binary is `server`).
  GOBIN="$gobin" go install "github.com/Shopify/toxiproxy/v2/cmd/server@$version" >&2
  mkdir -p "$(dirname "$bin")"
  mv "$gobin/server" "$bin"
  echo "$bin"
}

run() {
  local port=$1 bin
  bin=$(install)
  exec "$bin" -host 127.0.0.1 -port "$port"
}

case "${1:-}" in
  install) install ;;
  run) [ $# -eq 2 ] || { echo "usage: $0 run PORT" >&2; exit 2; }; run "$2" ;;
  *) echo "usage: $0 install | run PORT" >&2; exit 2 ;;
esac
