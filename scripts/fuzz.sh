#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time, on the stable toolchain:
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 20 s, every target)
# With --sanitizer none, cargo-fuzz passes only stable rustc flags (SanitizerCoverage through
# -Cpasses/-Cllvm-args), so no nightly and no RUSTC_BOOTSTRAP are needed; a panic aborts the
# process (libfuzzer-sys's panic hook), which is the crash libFuzzer reports. Seeds are read from
# tests/fuzz/corpus/<target>/ and never written to: what the fuzzer finds goes to a temporary
# directory. A crash fails the run and leaves its input in fuzz/artifacts/<target>/ (ignored by
# git); reproduce it with `cargo fuzz run --sanitizer none --target-dir fuzz/target <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
shift || true

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  started=$SECONDS
  cargo install cargo-fuzz --locked
  echo "==> cargo-fuzz installed in $((SECONDS - started)) s"
fi

# The fuzz build has its own target directory (instrumented, release): never the main one.
unset CARGO_TARGET_DIR
fuzz=(--sanitizer none --target-dir fuzz/target)

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

started=$SECONDS
echo "==> cargo fuzz build (${targets[*]})"
cargo fuzz build "${fuzz[@]}"
echo "==> fuzz targets built in $((SECONDS - started)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$work/$target" "fuzz/artifacts/$target"
  started=$SECONDS
  echo "==> fuzzing $target for ${seconds} s"
  # The first corpus directory receives new inputs (temporary); the seeds are only read.
  cargo fuzz run "${fuzz[@]}" "$target" "$work/$target" "tests/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 2>"$work/$target.log" || {
    tail -n 60 "$work/$target.log"
    echo "==> $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  }
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$work/$target.log" | tr '\n' ' '
  echo
  echo "==> $target: no crash in $((SECONDS - started)) s"
done
