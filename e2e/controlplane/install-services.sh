#!/usr/bin/env bash
# Installs the servers the local environment runs besides the control plane, from
# Debian's packages, when they are missing: Redis, and RabbitMQ with Erlang's epmd; and
# what the local verification sandbox runs the sample Project's tests with: Python's
# pytest, prlimit and unshare (util-linux); and the tools the observability and GitOps
# tests run as their users do: Prometheus and promtool (package `prometheus`) and Lua 5.1
# (Argo CD runs its health checks with gopher-lua, a Lua 5.1); tmux, the terminal the
# live view (`aios watch`) is tested in; and faketime, which runs an operator replica
# with its clock skewed in the leader election's test.
# The packages' own services are not started: the environment runs its own instances
# on loopback with fresh state.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v epmd >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
python3 -c 'import pytest' >/dev/null 2>&1 || missing+=(python3-pytest)
command -v prlimit >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v lua5.1 >/dev/null 2>&1 || missing+=(lua5.1)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-services: ${missing[*]} missing; run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 ||
  { echo "install-services: ${missing[*]} missing and there is no apt-get to install them" >&2; exit 1; }

echo "install-services: installing ${missing[*]}" >&2
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
