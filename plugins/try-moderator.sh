#!/usr/bin/env bash
# Sends TEXT through a running Palaver server's moderation chain, the way a user would: two new
# accounts, the first writes TEXT to the second over HTTP, and this prints what was stored
# (the text as the chain left it), or `refused: <reason>` when a moderator refused it.
#
#   PALAVER_URL=http://127.0.0.1:3000 plugins/try-moderator.sh word-filter 'oh heck'
#
# MODERATOR is waited for until it is loaded; the server runs the chain MODERATION_PLUGINS
# names, so MODERATOR must be in it. Needs curl and python3.
set -euo pipefail
moderator=${1:?usage: try-moderator.sh MODERATOR TEXT}
text=${2:?usage: try-moderator.sh MODERATOR TEXT}
# shellcheck source=plugins/try-common.sh
. "$(dirname "$0")/try-common.sh"
wait_loaded "$moderator"

sender_token=$(account sender | json '["token"]')
recipient_id=$(account recipient | json '["user_id"]')
body=$(python3 -c 'import json,sys; print(json.dumps({"recipient": sys.argv[1], "content": sys.argv[2]}))' \
  "$recipient_id" "$text")
answer=$(mktemp)
trap 'rm -f "$answer"' EXIT
status=$(curl -sS -o "$answer" -w '%{http_code}' -X POST "$base/api/chat/send" \
  -H "Authorization: Bearer $sender_token" -H 'Content-Type: application/json' -d "$body")
case $status in
  200 | 201)
    id=$(json '["id"]' <"$answer")
    call GET "/api/chat/messages?with=$recipient_id" "$sender_token" |
      python3 -c "import json,sys; print(next(m['content'] for m in json.load(sys.stdin) if m['id']=='$id'))"
    ;;
  422) echo "refused: $(json '["message"]' <"$answer")" ;;
  *) echo "the server answered $status: $(cat "$answer")" >&2; exit 1 ;;
esac
