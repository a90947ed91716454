# Shared by try-plugin.sh and try-moderator.sh (sourced, not run): talking to the server at
# $PALAVER_URL with curl, and waiting for a plugin to be loaded.
base=${PALAVER_URL:-http://127.0.0.1:3000}
password="try-plugin password"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
call() { # METHOD PATH [TOKEN] [BODY]
  curl -fsS -X "$1" "$base$2" ${3:+-H "Authorization: Bearer $3"} \
    ${4:+-H 'Content-Type: application/json' -d "$4"}
}
account() { # LABEL: a new account; prints the login answer ({token, user_id, expires_at})
  local email="try-$1-$RANDOM$RANDOM@example.com"
  call POST /api/auth/register "" "{\"email\":\"$email\",\"password\":\"$password\"}" >/dev/null
  call POST /api/auth/login "" "{\"email\":\"$email\",\"password\":\"$password\"}"
}
# wait_loaded NAME: a plugin just dropped into PLUGINS_DIR shows up at the folder's next look
# (every 250 ms), as "loading" until it is compiled: a second or so for a Rust component, a few
# for JavaScript and Python engines (at once when PLUGIN_CACHE_DIR holds it from an earlier start).
wait_loaded() {
  local lister_token listed
  lister_token=$(account lister | json '["token"]')
  for _ in $(seq 1 "$(( ${TRY_PLUGIN_WAIT_S:-120} * 10 ))"); do
    listed=$(call GET /api/plugins "$lister_token" |
      python3 -c "import json,sys; print(any(p['name']=='$1' and p.get('state')!='loading' for p in json.load(sys.stdin)))")
    [ "$listed" = True ] && return 0
    sleep 0.1
  done
  echo "plugin $1 is not loaded (see the server log)" >&2
  exit 1
}
