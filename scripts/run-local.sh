#!/usr/bin/env bash
# AIOS's main job, locally: a Project applied to a local Kubernetes control plane.
#
# What it does today: installs what is missing (Redis and RabbitMQ from Debian's
# packages; kube-apiserver, kube-controller-manager, kubectl and etcd built from their
# pinned Go modules and cached), builds AIOS, starts the local environment, installs the
# CRDs, the pantheon's Agents, a ModelProvider and a sample Project, and shows them with
# kubectl. The operator and the agents are not built yet, so the Project is accepted and
# validated by the API server but is not planned or run: it stays without a phase.
#
#   scripts/run-local.sh          # run, show, stop everything
#   scripts/run-local.sh --keep   # leave the environment running and print how to use it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

keep=false
[ "${1:-}" = "--keep" ] && keep=true

cache=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target/rust-$(rustc -V | awk '{print $2}')}

e2e/controlplane/install-services.sh
AIOS_CONTROLPLANE_BIN=$(e2e/controlplane/build.sh)
export AIOS_CONTROLPLANE_BIN
cargo build --workspace --locked --bins >&2

state=$(mktemp -d -u "${TMPDIR:-/tmp}/aios-local.XXXXXX")
eval "$("$CARGO_TARGET_DIR/debug/aios-env" start --dir "$state")"
if ! $keep; then
  trap '"$CARGO_TARGET_DIR/debug/aios-env" stop --dir "$state"' EXIT
fi
kubectl=$AIOS_CONTROLPLANE_BIN/kubectl

echo "==> installing the AIOS CRDs"
"$CARGO_TARGET_DIR/debug/aios" crds | "$kubectl" apply --server-side --field-manager=aios -f -
"$kubectl" wait --for=condition=Established --timeout=60s \
  crd/projects.aios.dev crd/tasks.aios.dev crd/agents.aios.dev crd/modelproviders.aios.dev
echo "==> applying the pantheon, a local model provider and a sample Project"
"$kubectl" apply -f manifests/examples/agents.yaml \
  -f manifests/examples/modelprovider-ollama.yaml \
  -f manifests/examples/project-diamond.yaml
echo
"$kubectl" get projects,agents,modelproviders
echo
echo "The API server accepted and validated these objects. The operator and the agents"
echo "are not built yet, so nothing plans or runs the Project."
if $keep; then
  echo
  echo "The environment is still running. To use it:"
  echo "  export KUBECONFIG=$KUBECONFIG"
  echo "  $kubectl get aios"
  echo "To stop it:"
  echo "  $CARGO_TARGET_DIR/debug/aios-env stop --dir $state"
fi
