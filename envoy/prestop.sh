#!/bin/sh
# drainpipe preStop hook: drain this Envoy, wait until nothing is in flight
# (or a timeout), then stop Envoy gracefully.
#
# Envoy exits at once on SIGTERM, without draining, so Kubernetes' SIGTERM
# must come after this script: run it as the container's preStop hook.
#
# Settings (environment):
#   DRAIN_URL        the plugin's drain API     (default http://127.0.0.1:10001/drain)
#   ENVOY_ADMIN      Envoy's admin              (default http://127.0.0.1:9901)
#   DRAIN_TIMEOUT_S  how long to wait, seconds  (default 35: grace_ms + 5 s)
#   DRAIN_TOKEN      bearer token, when the plugin's admin_token is set
#   ENVOY_STOP       1 to stop Envoy after the drain (default), 0 to leave it
#
# Exit status: 0 drained, 1 timed out with requests in flight (Envoy is
# stopped anyway), 2 the drain could not be started.
set -u

DRAIN_URL=${DRAIN_URL:-http://127.0.0.1:10001/drain}
ENVOY_ADMIN=${ENVOY_ADMIN:-http://127.0.0.1:9901}
DRAIN_TIMEOUT_S=${DRAIN_TIMEOUT_S:-35}
DRAIN_TOKEN=${DRAIN_TOKEN:-}
ENVOY_STOP=${ENVOY_STOP:-1}

case $DRAIN_TIMEOUT_S in
  ''|*[!0-9]*) echo "prestop: DRAIN_TIMEOUT_S must be whole seconds, got '$DRAIN_TIMEOUT_S'" >&2; exit 2 ;;
esac

log() { echo "prestop: $*"; }

drain_api() { # METHOD
  if [ -n "$DRAIN_TOKEN" ]; then
    curl -sS --max-time 5 -X "$1" -H "authorization: Bearer $DRAIN_TOKEN" "$DRAIN_URL"
  else
    curl -sS --max-time 5 -X "$1" "$DRAIN_URL"
  fi
}

field() { # NAME JSON: a scalar field of the drain status
  printf '%s' "$2" | sed -n "s/.*\"$1\":\"\{0,1\}\([a-z0-9]*\)\"\{0,1\}[,}].*/\1/p"
}

stop_envoy() {
  [ "$ENVOY_STOP" = 1 ] || return 0
  log "stopping Envoy ($ENVOY_ADMIN/quitquitquit)"
  curl -sS --max-time 5 -X POST "$ENVOY_ADMIN/quitquitquit" >/dev/null ||
    log "Envoy's admin did not answer; it may have stopped already"
}

status=$(drain_api POST) || { log "cannot reach the drain API at $DRAIN_URL"; exit 2; }
state=$(field state "$status")
if [ -z "$state" ]; then
  log "the drain API refused the drain: $status"
  exit 2
fi
log "drain started: state=$state inflight=$(field inflight "$status")"

waited=0
while :; do
  status=$(drain_api GET) || status=""
  state=$(field state "$status")
  inflight=$(field inflight "$status")
  if [ "$state" = drained ]; then
    log "drained after ${waited}s"
    stop_envoy
    exit 0
  fi
  if [ "$waited" -ge "$DRAIN_TIMEOUT_S" ]; then
    log "timed out after ${waited}s: state=${state:-unknown} inflight=${inflight:-unknown}"
    stop_envoy
    exit 1
  fi
  log "waiting: state=${state:-unknown} inflight=${inflight:-unknown} (${waited}s of ${DRAIN_TIMEOUT_S}s)"
  sleep 1
  waited=$((waited + 1))
done
