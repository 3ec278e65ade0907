#!/usr/bin/env bash
# Renders the plain install manifests (manifests/install/aios.yaml) from the Helm chart,
# for people who do not use Helm:
#   kubectl apply --server-side -f manifests/install/aios.yaml
# They install into namespace aios-system, with the operator reading its connection
# settings from the Secret aios-agent-connections (create it; see the README).
#
#   scripts/render-install.sh           # write the file
#   scripts/render-install.sh --check   # exit 1 if the file is not what the chart renders
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

helm=${HELM:-}
if [ -z "$helm" ]; then
  helm="$(e2e/tools/build.sh)/helm"
fi
out=manifests/install/aios.yaml
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
{
  echo "# Rendered from charts/aios by scripts/render-install.sh. Do not edit: change the chart."
  echo "# Install: kubectl apply --server-side -f manifests/install/aios.yaml"
  echo "---"
  echo "apiVersion: v1"
  echo "kind: Namespace"
  echo "metadata:"
  echo "  name: aios-system"
  "$helm" template aios charts/aios --namespace aios-system \
    --set connection.existingSecret=aios-agent-connections \
    --set rabbitmq.enabled=false --set redis.enabled=false
} >"$rendered"

if [ "${1:-}" = --check ]; then
  if ! diff -q "$rendered" "$out" >/dev/null 2>&1; then
    echo "$out is stale: run scripts/render-install.sh and commit the result" >&2
    diff -u "$out" "$rendered" | head -40 >&2 || true
    exit 1
  fi
  exit 0
fi
cp "$rendered" "$out"
echo "wrote $out" >&2
