#!/usr/bin/env bash
# Starts, stops or reports on a local Ollama server built by build.sh, listening on
# 127.0.0.1 only, with the chat and embedding models imported into a store in the cache.
#
#   e2e/model/serve.sh [start] [PORT]   # start (or find running) and print KEY=VALUE lines
#   eval "$(e2e/model/serve.sh start 18434)"
#   e2e/model/serve.sh stop [PORT]      # stop the server started for PORT
#   e2e/model/serve.sh status [PORT]    # exit 0 and print the lines if it is up, else 1
#
# PORT: the argument, else $AIOS_MODEL_PORT, else 11434.
# Other settings (environment):
#   AIOS_MODEL_HOST     the address to listen on (default 127.0.0.1; the local node's
#                       10.88.0.1 lets pods reach it)
#   AIOS_MODEL_RUN_DIR  pid file, env file, log and the server's HOME
#                       (default: ${TMPDIR:-/tmp}/aios-model-PORT)
#   AIOS_MODEL_LOG      server log file (default: $AIOS_MODEL_RUN_DIR/ollama.log)
#   AIOS_MODEL_PRELOAD  1 (default) loads both models into memory before returning; 0 skips
#   AIOS_MODEL_TIMEOUT  seconds to wait for the server to answer (default 60)
#   AIOS_CACHE          cache root, as for build.sh
#   OLLAMA_KEEP_ALIVE, OLLAMA_MAX_LOADED_MODELS, OLLAMA_NUM_PARALLEL  passed on to the
#                       server (defaults here: -1 = keep loaded forever, 2, 1)
#
# start runs build.sh first (a no-op once the cache is there; after that no network is used),
# the first time a store is used imports the chat model with `ollama create -f Modelfile`
# and the embedding model through the HTTP API (under a lock, so servers on several ports
# can share the store), loads both, and prints on stdout:
#   AIOS_MODEL_BASE_URL=http://127.0.0.1:PORT
#   AIOS_MODEL_CHAT=smollm2-135m-instruct
#   AIOS_MODEL_EMBED=all-minilm-l6-v2
#   AIOS_MODEL_EMBED_DIM=384
#   AIOS_MODEL_PID=... AIOS_MODEL_LOG=... AIOS_MODEL_RUN_DIR=...
# The same lines are kept in $AIOS_MODEL_RUN_DIR/serve.env. Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "model serve: $*" >&2; }
started=""   # set once this run has started a server, so that a failure stops it again
die() {
  echo "model serve: $*" >&2
  if [ -n "$started" ]; then stop; fi
  exit 1
}

cmd=start
case "${1:-}" in
  start | stop | status) cmd=$1; shift ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
port=${1:-${AIOS_MODEL_PORT:-11434}}
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] && [ "$port" -lt 65536 ] || die "bad port: $port"

host=${AIOS_MODEL_HOST:-127.0.0.1}
base_url="http://$host:$port"
run_dir=${AIOS_MODEL_RUN_DIR:-${TMPDIR:-/tmp}/aios-model-$port}
pid_file="$run_dir/ollama.pid"
env_file="$run_dir/serve.env"
server_log=${AIOS_MODEL_LOG:-$run_dir/ollama.log}
timeout=${AIOS_MODEL_TIMEOUT:-60}

# A process counts as alive while it exists and is not a zombie (a server this very shell
# started stays a zombie until reaped).
alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null
}
# The recorded pid, if that process is still an ollama server (pids get reused).
recorded_pid() {
  local pid
  [ -s "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'ollama serve'; then echo "$pid"; fi
}
# Loopback only: never route these requests through a proxy from the environment.
lcurl() { curl --noproxy '*' "$@"; }
answers() { lcurl -fsS --max-time 2 "$base_url/api/version" >/dev/null 2>&1; }

stop() {
  local pid waited=0
  pid=$(recorded_pid)
  if ! alive "$pid"; then
    log "no server recorded for port $port"
    rm -f "$pid_file" "$env_file"
    return 0
  fi
  log "stopping the server on port $port (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid" && [ "$waited" -lt 150 ]; do sleep 0.1; waited=$((waited + 1)); done
  # The server was started as the leader of its own process group; its model runners are
  # in that group too. Whatever is still there after the grace period is killed.
  kill -KILL -- "-$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.1; done
  wait "$pid" 2>/dev/null || true
  rm -f "$pid_file" "$env_file"
  log "stopped"
}

case "$cmd" in
  stop) stop; exit 0 ;;
  status)
    if alive "$(recorded_pid)" && answers && [ -s "$env_file" ]; then cat "$env_file"; exit 0; fi
    log "no server answering on $base_url"
    exit 1
    ;;
esac

# ---- start -------------------------------------------------------------------------------
command -v curl >/dev/null 2>&1 || die "curl is missing; run build.sh (as root) or install curl"
build_env=$("$here/build.sh") || die "build.sh failed"
eval "$build_env"

pid=$(recorded_pid)
if alive "$pid" && answers && [ -s "$env_file" ]; then
  log "already running on $base_url (pid $pid)"
  cat "$env_file"
  exit 0
fi
alive "$pid" && stop
if answers; then
  die "something else already answers on $base_url; pick another port"
fi

mkdir -p "$run_dir/home" "$(dirname "$server_log")"
models_dir=$AIOS_MODEL_OLLAMA_MODELS
mkdir -p "$models_dir"

# Everything the server and the CLI read from the environment is set explicitly:
# loopback only, the cached store, no blob pruning (other servers may share the store),
# models kept loaded, no cloud features, and a private HOME for the key Ollama creates.
ollama_env=(
  "HOME=$run_dir/home"
  "OLLAMA_HOST=$host:$port"
  "OLLAMA_MODELS=$models_dir"
  "OLLAMA_NOPRUNE=1"
  "OLLAMA_NO_CLOUD=1"
  "OLLAMA_KEEP_ALIVE=${OLLAMA_KEEP_ALIVE:--1}"
  "OLLAMA_MAX_LOADED_MODELS=${OLLAMA_MAX_LOADED_MODELS:-2}"
  "OLLAMA_NUM_PARALLEL=${OLLAMA_NUM_PARALLEL:-1}"
  "GIN_MODE=release"
)

log "starting $AIOS_MODEL_SERVER serve on $base_url (log: $server_log)"
# setsid makes the server the leader of a new process group, so that stop can also reach
# the runner processes it spawns, by that group's id.
env "${ollama_env[@]}" setsid "$AIOS_MODEL_SERVER" serve >>"$server_log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"
started=1

start=$(date +%s)
until answers; do
  if ! alive "$pid"; then
    tail -n 30 "$server_log" >&2 || true
    rm -f "$pid_file"
    die "the server exited during startup (log: $server_log)"
  fi
  if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
    tail -n 30 "$server_log" >&2 || true
    die "the server did not answer on $base_url within ${timeout}s"
  fi
  sleep 0.2
done
log "server answers after $(($(date +%s) - start))s"

# ---- import (once per store) -------------------------------------------------------------
manifest() { echo "$models_dir/manifests/registry.ollama.ai/library/$1/latest"; }

# The chat model: a GGUF file, imported with the CLI from a Modelfile (FROM, TEMPLATE,
# SYSTEM, PARAMETER lines; see chat.modelfile).
import_chat() {
  local t
  t=$(date +%s)
  log "importing $AIOS_MODEL_CHAT from $AIOS_MODEL_CHAT_MODELFILE"
  env "${ollama_env[@]}" "$AIOS_MODEL_SERVER" create "$AIOS_MODEL_CHAT" \
    -f "$AIOS_MODEL_CHAT_MODELFILE" >>"$server_log" 2>&1 ||
    die "ollama create $AIOS_MODEL_CHAT failed (log: $server_log)"
  log "imported $AIOS_MODEL_CHAT in $(($(date +%s) - t))s"
}

# The embedding model: a BERT safetensors checkpoint that the server converts to GGUF.
# `ollama create` with `FROM <dir>` cannot be used: the CLI sends each file under its base
# name only, so 1_Pooling/config.json lands on top of config.json and the conversion fails
# with "open 1_Pooling/config.json: no such file or directory". The HTTP API takes
# relative paths, so the files are uploaded as blobs and /api/create gets the full map.
import_embed() {
  local t rel digest files=""
  t=$(date +%s)
  log "importing $AIOS_MODEL_EMBED from $AIOS_MODEL_EMBED_DIR"
  for rel in $AIOS_MODEL_EMBED_FILES; do
    digest=sha256:$(sha256sum "$AIOS_MODEL_EMBED_DIR/$rel" | cut -d' ' -f1)
    lcurl -fsS --max-time 120 -X POST -T "$AIOS_MODEL_EMBED_DIR/$rel" \
      "$base_url/api/blobs/$digest" >/dev/null || die "uploading $rel to $base_url failed"
    files+="${files:+,}\"$rel\":\"$digest\""
  done
  response=$(lcurl -sS --max-time 300 "$base_url/api/create" -d "{\"model\":\"$AIOS_MODEL_EMBED\",
    \"files\":{$files},\"parameters\":$AIOS_MODEL_EMBED_PARAMS,\"stream\":false}") || true
  echo "create $AIOS_MODEL_EMBED: $response" >>"$server_log"
  case "$response" in
    *'"status":"success"'*) ;;
    *) die "creating $AIOS_MODEL_EMBED failed: $response (log: $server_log)" ;;
  esac
  log "imported $AIOS_MODEL_EMBED in $(($(date +%s) - t))s"
}

# One importer at a time per store; a server started meanwhile on another port waits here
# and then finds the manifests. The lock is released when this shell exits.
exec 9>"$models_dir/.import.lock"
flock 9
if [ ! -s "$(manifest "$AIOS_MODEL_CHAT")" ]; then import_chat; fi
if [ ! -s "$(manifest "$AIOS_MODEL_EMBED")" ]; then import_embed; fi
flock -u 9

# ---- preload -----------------------------------------------------------------------------
if [ "${AIOS_MODEL_PRELOAD:-1}" = 1 ]; then
  t=$(date +%s)
  # An empty generate request only loads the model; a one-word embed loads the other.
  lcurl -fsS --max-time "$timeout" "$base_url/api/generate" \
    -d "{\"model\":\"$AIOS_MODEL_CHAT\",\"keep_alive\":-1}" >/dev/null ||
    die "loading $AIOS_MODEL_CHAT failed (log: $server_log)"
  lcurl -fsS --max-time "$timeout" "$base_url/api/embed" \
    -d "{\"model\":\"$AIOS_MODEL_EMBED\",\"input\":\"warm up\",\"keep_alive\":-1}" >/dev/null ||
    die "loading $AIOS_MODEL_EMBED failed (log: $server_log)"
  log "models loaded in $(($(date +%s) - t))s"
fi

cat >"$env_file.tmp" <<EOF
AIOS_MODEL_BASE_URL=$base_url
AIOS_MODEL_CHAT=$AIOS_MODEL_CHAT
AIOS_MODEL_EMBED=$AIOS_MODEL_EMBED
AIOS_MODEL_EMBED_DIM=$AIOS_MODEL_EMBED_DIM
AIOS_MODEL_PID=$pid
AIOS_MODEL_LOG=$server_log
AIOS_MODEL_RUN_DIR=$run_dir
EOF
mv "$env_file.tmp" "$env_file"
cat "$env_file"
