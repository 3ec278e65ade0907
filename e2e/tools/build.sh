#!/usr/bin/env bash
# Builds the client tools the tests run as users do, each from its pinned Go module in a
# folder beside this script, into a cache outside the clone keyed by the modules' go.mod
# and go.sum (and our own Go sources), and prints the bin directory on stdout:
#   helm     helm v4, for the chart's tests
#   kstatus  our small command over the kstatus library (kstatus/main.go): the status
#            Flux and helm --wait compute for an object, or Flux's own CEL reading of
#            a Kustomization's healthCheckExprs
#
#   e2e/tools/build.sh            # build or reuse; prints the bin directory
#   AIOS_CACHE_DIR=/somewhere     # cache root (default: ~/.cache/aios)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
die() { echo "tools build: $*" >&2; exit 1; }
log() { echo "tools build: $*" >&2; }

# tool name, its module folder, the package to build, the module whose version it reports
tools=(
  "helm helm helm.sh/helm/v4/cmd/helm helm.sh/helm/v4"
  "kstatus kstatus aios.dev/e2e/tools/kstatus sigs.k8s.io/cli-utils"
)

sums=$(
  shopt -s nullglob
  for t in "${tools[@]}"; do set -- $t; cat "$here/$2/go.mod" "$here/$2/go.sum" "$here/$2"/*.go; done |
    sha256sum | cut -c1-12
)
bin="$cache_root/tools/$sums/bin"
missing=()
for t in "${tools[@]}"; do set -- $t; [ -x "$bin/$1" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then
  log "reusing cached tools in $bin"
  echo "$bin"
  exit 0
fi
command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH; install Go 1.26 or newer"

mkdir -p "$bin"
stage=$(mktemp -d "$bin/../stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0
for t in "${missing[@]}"; do
  set -- $t
  version=$(awk -v m="$4" '$1 == m {print $2; exit}' "$here/$2/go.mod")
  [ -n "$version" ] || die "cannot read the version of $4 from $here/$2/go.mod"
  start=$(date +%s)
  log "building $1 ($4 $version)"
  ldflags="-s -w"
  # helm reports its version from these variables.
  [ "$1" = helm ] && ldflags+=" -X helm.sh/helm/v4/internal/version.version=$version"
  (cd "$here/$2" && go build -ldflags "$ldflags" -o "$stage/$1" "$3") ||
    die "building $1 failed (see the go output above)"
  mv "$stage/$1" "$bin/$1"
  log "built $1 in $(($(date +%s) - start))s"
done
echo "$bin"
