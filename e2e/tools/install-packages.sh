#!/usr/bin/env bash
# Installs, from Debian's packages when missing, the tools the observability and GitOps
# tests run as their users do: Prometheus and promtool (package `prometheus`), which
# scrape AIOS and check and unit-test its alert rules, and Lua 5.1 (package `lua5.1`),
# which runs the Argo CD health checks (Argo CD runs them with gopher-lua, a Lua 5.1).
# The prometheus package's own service is not started: the tests run their own server on
# loopback with a fresh data directory.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v lua5.1 >/dev/null 2>&1 || missing+=(lua5.1)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-packages: ${missing[*]} missing; run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 ||
  { echo "install-packages: ${missing[*]} missing and there is no apt-get to install them" >&2; exit 1; }

echo "install-packages: installing ${missing[*]}" >&2
# Keep the packages' init scripts from starting system-wide services during the install.
policy=/usr/sbin/policy-rc.d
made_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=true
fi
cleanup() { if $made_policy; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
