#!/usr/bin/env bash
# AIOS's main job, locally: a Project applied to a local Kubernetes control plane.
#
# What it does today: installs what is missing (Redis and RabbitMQ from Debian's
# packages; kube-apiserver, kube-controller-manager, kubectl and etcd built from their
# pinned Go modules and cached), builds AIOS, starts the local environment and the
# operator, installs the CRDs, the pantheon's Agents, a ModelProvider and a sample
# Project, and shows them with kubectl. The agent runtime and a local model server are
# not built yet, so the first Task waits for a ready model provider.
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
operator=""
cleanup() {
  $keep && return
  if [ -n "$operator" ]; then kill "$operator" 2>/dev/null; wait "$operator" 2>/dev/null; fi
  "$CARGO_TARGET_DIR/debug/aios-env" stop --dir "$state"
}
trap cleanup EXIT
kubectl=$AIOS_CONTROLPLANE_BIN/kubectl

echo "==> installing the AIOS CRDs"
"$CARGO_TARGET_DIR/debug/aios" crds | "$kubectl" apply --server-side --field-manager=aios -f -
"$kubectl" wait --for=condition=Established --timeout=60s \
  crd/projects.aios.dev crd/tasks.aios.dev crd/agents.aios.dev crd/modelproviders.aios.dev
echo "==> starting the operator"
AIOS_HTTP_ADDR=127.0.0.1:0 AIOS_LOG_FORMAT=text POD_NAME=aios-local \
  "$CARGO_TARGET_DIR/debug/aios-operator" >"$state/logs/operator.log" 2>&1 &
operator=$!
echo "==> applying the pantheon, a local model provider and a sample Project"
"$kubectl" apply -f manifests/examples/agents.yaml \
  -f manifests/examples/modelprovider-ollama.yaml \
  -f manifests/examples/project-diamond.yaml
sleep 5
echo
"$kubectl" get projects,tasks,agents,modelproviders
echo
echo "Hera took the Project's plan and created its Tasks. The first one waits for a ready"
echo "model provider: the sample ModelProvider serves Ollama in the cluster, and no pod runs"
echo "on this control plane (no kubelet). The agent runtime and the local model server are"
echo "not built yet. The operator's log is $state/logs/operator.log."
if $keep; then
  echo
  echo "The environment is still running. To use it:"
  echo "  export KUBECONFIG=$KUBECONFIG"
  echo "  $kubectl get aios"
  echo "To stop it:"
  echo "  kill $operator; $CARGO_TARGET_DIR/debug/aios-env stop --dir $state"
fi
