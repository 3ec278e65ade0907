#!/usr/bin/env bash
# Runs AIOS's whole test suite from a clean clone, installing what it needs:
#   - Redis and RabbitMQ from Debian's packages (when missing),
#   - kube-apiserver, kube-controller-manager, kubectl and etcd built from their pinned Go
#     modules (cached under ~/.cache/aios, keyed by version),
#   - helm and kstatus (our checker on the kstatus library) built from their pinned Go
#     modules (cached the same way), and the Argo CD and Flux CRDs taken from theirs,
#   - Prometheus, promtool and Lua 5.1 from Debian's packages (dashboards, alerts and
#     Argo CD health checks are tested with them),
#   - debootstrap, umoci and runc from Debian's packages, for the offline image build,
#   - the local node: containerd, the CNI plugins, iptables from Debian's packages;
#     kubelet, kube-scheduler, kube-proxy and CoreDNS from their pinned Go modules,
#   - the crates, with the Rust target directory cached under ~/.cache/aios as well.
# Then: formatting, clippy, and `cargo test --workspace` with one local environment
# (etcd, kube-apiserver, kube-controller-manager, RabbitMQ, Redis on loopback) that every
# test binary shares and that is stopped afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$(date +%s)
step() { echo "==> $* ($(($(date +%s) - started))s)" >&2; }

for tool in cargo rustc go; do
  command -v "$tool" >/dev/null 2>&1 || { echo "test.sh: $tool is not on PATH" >&2; exit 1; }
done

cache=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target/rust-$(rustc -V | awk '{print $2}')}

step "installing Redis, RabbitMQ, Prometheus and Lua 5.1 when missing"
e2e/controlplane/install-services.sh
step "building or reusing the control plane"
AIOS_CONTROLPLANE_BIN=$(e2e/controlplane/build.sh)
export AIOS_CONTROLPLANE_BIN
step "building or reusing helm and kstatus"
AIOS_TOOLS_BIN=$(e2e/tools/build.sh)
export AIOS_TOOLS_BIN
step "taking the Argo CD and Flux CRDs from their published Go modules"
AIOS_GITOPS_CRDS=$(e2e/tools/gitops-crds.sh)
export AIOS_GITOPS_CRDS
step "installing the image build's tools when missing"
images/install-tools.sh
step "installing the node's packages when missing, building or reusing its programs"
e2e/node/install-packages.sh
AIOS_NODE_BIN=$(e2e/node/build.sh)
export AIOS_NODE_BIN

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "building the tests and the binaries"
cargo test --workspace --locked --no-run
cargo build --workspace --bins --locked
step "building or reusing the images (offline, from the Dockerfiles)"
images/build.py >/dev/null

step "running the tests in a shared local environment"
"$CARGO_TARGET_DIR/debug/aios-env" run -- cargo test --workspace --locked
step "done"
