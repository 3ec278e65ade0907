#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver, kube-controller-manager,
# kubectl) from the pinned Go modules beside this script, into a cache directory outside
# the clone keyed by the pinned versions, and prints that directory's bin/ on stdout.
# A second run with the same pins finds the binaries there and returns at once.
#
#   e2e/controlplane/build.sh            # build or reuse; prints the bin directory
#   AIOS_CACHE_DIR=/somewhere build.sh   # cache root (default: ~/.cache/aios)
#
# Progress and timings go to stderr so callers can capture the path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}

die() { echo "controlplane build: $*" >&2; exit 1; }
log() { echo "controlplane build: $*" >&2; }

# The versions are read from the go.mod files, so the pins live in one place.
pinned() { awk -v m="$1" '$1 == m && $2 ~ /^v/ {print $2; exit}' "$2"; }
kube_version=$(pinned k8s.io/kubernetes "$here/kube/go.mod")
etcd_version=$(pinned go.etcd.io/etcd/server/v3 "$here/etcd/go.mod")
[ -n "$kube_version" ] || die "cannot read the k8s.io/kubernetes version from $here/kube/go.mod"
[ -n "$etcd_version" ] || die "cannot read the etcd server version from $here/etcd/go.mod"

# The key also covers go.sum, so a changed dependency graph never reuses stale binaries.
sums=$(cat "$here/kube/go.mod" "$here/kube/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum" | sha256sum | cut -c1-12)
bin="$cache_root/controlplane/kube-$kube_version-etcd-$etcd_version-$sums/bin"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

have_all() {
  local b
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

if have_all; then
  log "reusing cached binaries in $bin"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 ||
  die "no Go toolchain on PATH; install Go 1.26 or newer (https://go.dev/dl) and run again"
go_version=$(go env GOVERSION)
case "$go_version" in
  go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
  *) die "Go $go_version is too old: kubernetes $kube_version needs Go 1.26 or newer" ;;
esac

mkdir -p "$bin"
# Build into a scratch directory and move into place at the end, so an interrupted build
# never leaves a half-written binary that a later run would take for a good one.
stage=$(mktemp -d "$bin/../stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0
start=$(date +%s)

minor=${kube_version#v1.}
minor=${minor%%.*}
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  version_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

log "building etcd $etcd_version"
(cd "$here/etcd" && go build -ldflags "-s -w" -o "$stage/etcd" go.etcd.io/etcd/server/v3) ||
  die "building etcd failed (see the go output above)"

for cmd in kube-apiserver kube-controller-manager kubectl; do
  log "building $cmd $kube_version"
  (cd "$here/kube" && go build -ldflags "-s -w $version_flags" -o "$stage/$cmd" "k8s.io/kubernetes/cmd/$cmd") ||
    die "building $cmd failed (see the go output above)"
done

mv "$stage"/* "$bin/"
log "built ${binaries[*]} in $(($(date +%s) - start))s into $bin"
echo "$bin"
