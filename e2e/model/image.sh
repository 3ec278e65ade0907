#!/usr/bin/env bash
# Builds the model server's image offline, for pods on the local node: the Ollama that
# build.sh builds and the local models already imported into its store (at /models, so
# a ModelProvider with `serve.cache.fromImage: true` and `pullPolicy: Never` needs no
# model registry), on the Debian base images/build.py makes. Runs as 65532; HOME is the
# volume the operator mounts. Prints the OCI archive's path, cached under
# ~/.cache/aios/images keyed by the server and the store.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
die() { echo "model image: $*" >&2; exit 1; }
log() { echo "model image: $*" >&2; }
command -v umoci >/dev/null 2>&1 || die "umoci is missing: run images/install-tools.sh"

eval "$("$here/build.sh")"
store=$AIOS_MODEL_OLLAMA_MODELS
# The models reach the store on a server's first start: import them if that never ran.
if [ -z "$(ls -A "$store/manifests" 2>/dev/null)" ]; then
  log "importing the models into $store"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  run_dir=$(mktemp -d)
  AIOS_MODEL_RUN_DIR=$run_dir AIOS_MODEL_PRELOAD=0 "$here/serve.sh" start "$port" >/dev/null
  AIOS_MODEL_RUN_DIR=$run_dir "$here/serve.sh" stop "$port" >/dev/null
  rm -rf "$run_dir"
fi
base=$(ls -t "$cache"/images/debian-bookworm-minbase-*.tar 2>/dev/null | head -n 1)
[ -n "$base" ] || die "no Debian base in $cache/images: run images/build.py first"

version=$AIOS_MODEL_SERVER_VERSION
key=$( (sha256sum "$AIOS_MODEL_SERVER" "$base" "$0" | cut -d" " -f1; find "$store" -type f -printf '%P %s\n' | sort) | sha256sum | cut -c1-12)
out=$cache/images/aios-model-server-$version-$key.oci.tar
if [ -f "$out" ]; then
  log "reusing $out"
  echo "$out"
  exit 0
fi
log "assembling aios-model-server:$version"
scratch=$(mktemp -d "$cache/images/model.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
root=$scratch/rootfs
mkdir -p "$root"
tar -C "$root" --numeric-owner -xf "$base"
install -D -m 0755 "$AIOS_MODEL_SERVER" "$root/usr/local/bin/ollama"
mkdir -p "$root/models" "$root/home/ollama"
cp -r "$store/." "$root/models/"
chmod -R a+rX "$root/models"
grep -q ':65532:' "$root/etc/passwd" || echo "nonroot:x:65532:65532:nonroot:/home/ollama:/usr/sbin/nologin" >>"$root/etc/passwd"
grep -q ':65532:' "$root/etc/group" || echo "nonroot:x:65532:" >>"$root/etc/group"
layout=$scratch/layout
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci insert --image "$layout:$version" "$root" / >/dev/null
umoci config --image "$layout:$version" --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/ollama --config.cmd serve \
  --config.env OLLAMA_MODELS=/models --config.env OLLAMA_NOPRUNE=1 \
  --config.env OLLAMA_NO_CLOUD=1 --config.env HOME=/home/ollama \
  --config.env OLLAMA_HOST=0.0.0.0:11434 --config.exposedports 11434/tcp \
  --config.label org.opencontainers.image.title=aios-model-server \
  --config.label "org.opencontainers.image.description=Ollama with the local models, for AIOS's local node" \
  --config.label org.opencontainers.image.version="$version"
umoci gc --layout "$layout"
tar -C "$layout" -cf "$out.partial" .
mv "$out.partial" "$out"
# Older builds are never used again: keep the cache from growing.
find "$cache/images" -maxdepth 1 -name "aios-model-server-$version-*.oci.tar" ! -path "$out" -delete
log "built $out ($(du -m "$out" | cut -f1) MiB)"
echo "$out"
