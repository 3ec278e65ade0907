#!/usr/bin/env bash
# Takes the Argo CD and Flux CRDs from those projects' published Go modules (pinned in
# gitops-crds/go.mod, their checksums in gitops-crds/go.sum) into a cache outside the
# clone keyed by those files and this script, and prints that directory on stdout. The
# tests install them to check the examples under manifests/gitops/ against the real
# schemas (e2e/tests/gitops.rs).
#
#   e2e/tools/gitops-crds.sh      # download or reuse; prints the CRD directory
#   AIOS_CACHE_DIR=/somewhere     # cache root (default: ~/.cache/aios)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mods="$here/gitops-crds"
cache_root=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
die() { echo "gitops crds: $*" >&2; exit 1; }
log() { echo "gitops crds: $*" >&2; }

# module, the folder in it that holds the CRDs, the CRD files taken
sources=(
  "github.com/argoproj/argo-cd/v3 manifests/crds application-crd.yaml appproject-crd.yaml applicationset-crd.yaml"
  "github.com/fluxcd/helm-controller config/crd/bases helm.toolkit.fluxcd.io_helmreleases.yaml"
  "github.com/fluxcd/kustomize-controller config/crd/bases kustomize.toolkit.fluxcd.io_kustomizations.yaml"
  "github.com/fluxcd/source-controller config/crd/bases source.toolkit.fluxcd.io_gitrepositories.yaml source.toolkit.fluxcd.io_helmrepositories.yaml source.toolkit.fluxcd.io_ocirepositories.yaml"
)

key=$(cat "$mods/go.mod" "$mods/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
out="$cache_root/gitops-crds/$key"
if [ -f "$out/.complete" ]; then
  log "reusing $out"
  echo "$out"
  exit 0
fi
command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH; install Go 1.26 or newer"

mkdir -p "$cache_root/gitops-crds"
stage=$(mktemp -d "$cache_root/gitops-crds/stage.XXXXXX")
# Downloads run outside any module, so nothing here resolves the modules' own
# dependencies: only the pinned zips are fetched (and checked against sum.golang.org).
neutral=$(mktemp -d)
trap 'rm -rf "$stage" "$neutral"' EXIT

field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1; }

for s in "${sources[@]}"; do
  set -- $s
  module=$1 dir=$2
  shift 2
  version=$(awk -v m="$module" '$1 == m {print $2; exit}' "$mods/go.mod")
  [ -n "$version" ] || die "no version of $module in $mods/go.mod"
  want=$(awk -v m="$module" -v v="$version" '$1 == m && $2 == v {print $3; exit}' "$mods/go.sum")
  [ -n "$want" ] || die "no checksum of $module $version in $mods/go.sum"
  start=$(date +%s)
  json=$(cd "$neutral" && GOFLAGS= go mod download -json "$module@$version") ||
    die "go mod download $module@$version failed: $(field Error <<<"$json")"
  sum=$(field Sum <<<"$json")
  src=$(field Dir <<<"$json")
  [ "$sum" = "$want" ] || die "$module $version has checksum '$sum', go.sum pins $want"
  [ -d "$src/$dir" ] || die "$module $version has no $dir: $(field Error <<<"$json")"
  for f in "$@"; do
    [ -f "$src/$dir/$f" ] || die "$module $version has no $dir/$f"
    grep -q '^kind: CustomResourceDefinition' "$src/$dir/$f" || die "$dir/$f of $module is not a CRD"
    cp "$src/$dir/$f" "$stage/$f"
    chmod 0644 "$stage/$f"
  done
  log "took $# CRDs from $module $version in $(($(date +%s) - start))s"
done

printf '%s\n' "${sources[@]}" >"$stage/SOURCES"
touch "$stage/.complete"
rm -rf "$out"
chmod 0755 "$stage"
mv "$stage" "$out"
echo "$out"
