#!/usr/bin/env bash
# Fuzzes what AIOS decodes from others, for a bounded time per target, and prints the
# figures: inputs tried and crashes found. A benchmark-style command, not part of the
# test suite (it needs the nightly toolchain and cargo-fuzz, which it installs).
#
#   scripts/fuzz.sh [seconds per target, default 60] [target...]
#
# Targets (fuzz/fuzz_targets): bus_messages (every bus message decoder), plan_validation
# (the plan rules Hera holds a model's plan to). Crashes land in fuzz/artifacts/<target>/;
# the corpus grows in fuzz/corpus/<target>/ from the seeds in fuzz/seeds/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bus_messages plan_validation)

cache=${AIOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios}
CARGO_FUZZ_VERSION=0.13.2
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
export CARGO_TARGET_DIR=$cache/target/fuzz-$(rustc +nightly -V | awk '{print $2 "-" $4}' | tr -d '()')

cd fuzz
printf '%-18s %10s %14s %12s %8s\n' target seconds "inputs tried" "per second" crashes
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -close_fd_mask=3 >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  if [ -z "$runs" ]; then
    echo "fuzz.sh: $target did not report its figures (exit $status); its log:" >&2
    tail -40 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  printf '%-18s %10s %14s %12s %8s\n' "$target" "$seconds" "$runs" "$((runs / seconds))" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    echo "  crashes: $(find "artifacts/$target" -type f | tr '\n' ' ')" >&2
  fi
  rm -f "$log"
done
