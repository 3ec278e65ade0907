#!/usr/bin/env bash
# Builds the local node's programs into a cache outside the clone, keyed by the pinned
# modules, and prints that bin directory on stdout:
#   - kubelet, kube-scheduler and kube-proxy from the control plane's pinned Kubernetes
#     module (e2e/controlplane/kube), so node and API server are the same version;
#   - CoreDNS (the cluster DNS) from its module pinned in coredns/go.mod;
#   - pause (the pod sandbox) compiled from the Kubernetes module's own pause.c, and its
#     image, pause.oci.tar, made with umoci (no registry is reachable here).
# containerd, runc and the CNI plugins come from Debian's packages (install-packages.sh).
#
#   e2e/node/build.sh            # build or reuse; prints the bin directory
#   AIOS_CACHE_DIR=/somewhere     # cache root (default: ~/.cache/aios)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kube=$here/../controlplane/kube
cache_root=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
die() { echo "node build: $*" >&2; exit 1; }
log() { echo "node build: $*" >&2; }

pinned() { awk -v m="$1" '$1 == m && $2 ~ /^v/ {print $2; exit}' "$2"; }
kube_version=$(pinned k8s.io/kubernetes "$kube/go.mod")
coredns_version=$(pinned github.com/coredns/coredns "$here/coredns/go.mod")
[ -n "$kube_version" ] || die "cannot read the k8s.io/kubernetes version from $kube/go.mod"
[ -n "$coredns_version" ] || die "cannot read the CoreDNS version from $here/coredns/go.mod"
sums=$(cat "$kube/go.mod" "$kube/go.sum" "$here/coredns/go.mod" "$here/coredns/go.sum" "$0" | sha256sum | cut -c1-12)
bin="$cache_root/node/kube-$kube_version-coredns-$coredns_version-$sums/bin"
outputs=(kubelet kube-scheduler kube-proxy coredns pause pause.oci.tar)

have_all() {
  local o
  for o in "${outputs[@]}"; do [ -e "$bin/$o" ] || return 1; done
}
if have_all; then
  log "reusing cached node programs in $bin"
  echo "$bin"
  exit 0
fi
command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH; install Go 1.26 or newer"
command -v gcc >/dev/null 2>&1 || die "no C compiler: apt-get install gcc libc6-dev (pause is C)"
command -v umoci >/dev/null 2>&1 || die "umoci is missing: run images/install-tools.sh"

mkdir -p "$bin"
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
for cmd in kubelet kube-scheduler kube-proxy; do
  log "building $cmd $kube_version"
  (cd "$kube" && go build -ldflags "-s -w $version_flags" -o "$stage/$cmd" "k8s.io/kubernetes/cmd/$cmd") ||
    die "building $cmd failed (see the go output above)"
done
log "building CoreDNS $coredns_version"
(cd "$here/coredns" && go build -ldflags "-s -w" -o "$stage/coredns" github.com/coredns/coredns) ||
  die "building CoreDNS failed (see the go output above)"

log "building pause and its image"
pause_c=$(cd "$kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
[ -f "$pause_c" ] || die "no $pause_c in the Kubernetes module"
gcc -Os -static -o "$stage/pause" "$pause_c" || die "compiling pause failed"
mkdir -p "$stage/pause-root" && cp "$stage/pause" "$stage/pause-root/pause"
umoci init --layout "$stage/pause-layout"
umoci new --image "$stage/pause-layout:3.10"
umoci insert --image "$stage/pause-layout:3.10" "$stage/pause-root" / >/dev/null
umoci config --image "$stage/pause-layout:3.10" --os linux --architecture amd64 \
  --config.entrypoint /pause --config.user 65535:65535
tar -C "$stage/pause-layout" -cf "$stage/pause.oci.tar" .

for o in "${outputs[@]}"; do mv "$stage/$o" "$bin/$o"; done
log "built the node programs in $(($(date +%s) - start))s into $bin"
echo "$bin"
