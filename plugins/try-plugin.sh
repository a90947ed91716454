#!/usr/bin/env bash
# Asks a running Palaver server to answer with a plugin, the way a user would: two new
# accounts, the second picks PLUGIN (with optional settings) and goes BUSY, the first writes to
# it, and this prints the auto-reply that comes back.
#
#   PALAVER_URL=http://127.0.0.1:3000 plugins/try-plugin.sh away-message '{"message":"Back at 5"}'
#
# Needs curl and python3. Exits non-zero when the plugin is not loaded or the reply is the
# server's standard "unavailable" message (the plugin failed: see the server log, and
# GET /plugins on the operator's METRICS_ADDR listener for its last_error).
set -euo pipefail
plugin=${1:?usage: try-plugin.sh PLUGIN [CONFIG_JSON]}
config=${2:-{\}}
# shellcheck source=plugins/try-common.sh
. "$(dirname "$0")/try-common.sh"
wait_loaded "$plugin"

sender=$(account sender)
busy=$(account busy)
sender_token=$(json '["token"]' <<<"$sender")
busy_token=$(json '["token"]' <<<"$busy")
busy_id=$(json '["user_id"]' <<<"$busy")

call PUT /api/users/me/responder "$busy_token" "{\"plugin\":\"$plugin\",\"config\":$config}" >/dev/null
call PUT /api/user/status "$busy_token" '{"status":"BUSY"}' >/dev/null
call POST /api/chat/send "$sender_token" "{\"recipient\":\"$busy_id\",\"content\":\"Are you there?\"}" >/dev/null

# The auto-reply comes within the responder's deadline (10 s by default).
for _ in $(seq 1 110); do
  reply=$(call GET "/api/chat/messages?with=$busy_id" "$sender_token" |
    python3 -c 'import json,sys; r=[m["content"] for m in json.load(sys.stdin) if m["kind"]=="auto_reply"]; print(r[0] if r else "")')
  if [ -n "$reply" ]; then
    echo "$reply"
    case $reply in "This user is unavailable right now"*) exit 1 ;; esac
    exit 0
  fi
  sleep 0.1
done
echo "no auto-reply within 11 s" >&2
exit 1
