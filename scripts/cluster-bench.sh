#!/usr/bin/env bash
# palaver-bench against a cluster on this machine: nats-server, FerretDB (unless MONGODB_URI is
# given) and NODES release nodes, with the abuse limits lifted as palaver-bench does for the
# server it starts. Users are spread over the nodes (palaver-bench --urls).
#
#   cargo build --release --workspace
#   scripts/cluster-bench.sh 3                      # three nodes
#   scripts/cluster-bench.sh 1 --seconds 5          # one node, still on NATS; extra args go to the bench
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:?usage: $0 NODES [palaver-bench args...]}
shift

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT

nats_port=$(free_port)
scripts/nats.sh run "$nats_port" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port"
if [ -z "${MONGODB_URI:-}" ]; then
  mongo_port=$(free_port)
  scripts/ferretdb.sh run "$work/ferretdb" "$mongo_port" >"$work/ferretdb.log" 2>&1 &
  pids+=($!)
  wait_port "$mongo_port"
  MONGODB_URI="mongodb://127.0.0.1:$mongo_port/"
fi
database="bench_$(date +%s)"

urls=()
for i in $(seq 1 "$nodes"); do
  port=$(free_port)
  env HOST=127.0.0.1 PORT="$port" DATA_DIR="$work/node$i" NODE_ID="bench-$i" RUST_LOG=warn \
    NATS_URL="nats://127.0.0.1:$nats_port" MONGODB_URI="${MONGODB_URI%/}/$database" \
    JWT_SECRET="cluster benchmark secret 0123456789abcdef" \
    LOGIN_FAILURE_LIMIT=1000000/s AUTH_RATE_LIMIT=1000000/s SEND_RATE_LIMIT=1000000/s \
    AUTO_REPLY_LIMIT=1000000/s AUTO_REPLY_TOTAL_LIMIT=1000000/s MAX_CONNECTIONS_PER_USER=1000000 \
    MAX_CONNECTIONS=1000000 PASSWORD_HASH_WAIT=60s \
    ./target/release/palaver >"$work/node$i.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
for url in "${urls[@]}"; do
  for _ in $(seq 1 300); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "$url/readyz" >/dev/null
done
echo "cluster-bench: $nodes node(s) on NATS 127.0.0.1:$nats_port and ${MONGODB_URI%/}/$database"
./target/release/palaver-bench --urls "$(IFS=,; echo "${urls[*]}")" --skip-idle --skip-responder "$@"
