#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one. Installs only what is missing:
#   - Debian packages that -sys crates build against (openssl-sys: libssl-dev, pkg-config)
#   - Python packages the interop tests drive (tests/requirements.txt: jwcrypto, websockets, hypercorn)
#   - the Kafka-compatible test broker `tansu` 0.6.0, only when no `tansu` is on the PATH
#     (`cargo install`, 10-20 minutes, once per machine)
# then starts tansu on a free loopback port (in-memory storage, stopped on exit), checks
# formatting and lints, runs every test with the `kafka` feature (one build: the default build
# is not compiled a second time), then fuzzes each parser for a bounded time
# (scripts/fuzz.sh: installs cargo-fuzz if it is missing; FUZZ_SECONDS per target, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pkg in libssl-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  apt-get update && apt-get install -y "${missing[@]}"
fi

if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, pathlib, sys
for line in pathlib.Path("tests/requirements.txt").read_text().split():
    name, _, version = line.partition("==")
    if m.version(name) != version:
        sys.exit(1)
PY
then
  echo "==> installing Python packages from tests/requirements.txt"
  python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi

if ! command -v tansu >/dev/null 2>&1; then
  echo "==> installing the test broker: cargo install tansu 0.6.0 (10-20 minutes, once)"
  # dynostore is the feature behind the memory:// storage engine used below; without it the
  # broker starts and then fails with FeatureNotEnabled { feature: "dynostore" }.
  cargo install tansu --version 0.6.0 --locked --features dynostore
fi

# The Kafka tests need a broker: tansu, in memory, on a free loopback port, for this run only.
kafka_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kafka_log=$(mktemp)
tansu broker \
  --listener-url "tcp://127.0.0.1:$kafka_port" \
  --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ >"$kafka_log" 2>&1 &
kafka_pid=$!
stop_broker() {
  kill "$kafka_pid" 2>/dev/null || true
  wait "$kafka_pid" 2>/dev/null || true
  rm -f "$kafka_log"
}
trap stop_broker EXIT
echo "==> waiting for the test broker (tansu, pid $kafka_pid) on 127.0.0.1:$kafka_port"
for _ in $(seq 1 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null; then
    break
  fi
  if ! kill -0 "$kafka_pid" 2>/dev/null; then
    echo "the test broker exited:" >&2
    cat "$kafka_log" >&2
    if grep -q 'FeatureNotEnabled' "$kafka_log"; then
      # A tansu installed without --features dynostore cannot use memory:// storage.
      echo "this tansu lacks the dynostore feature; reinstall it with:" >&2
      echo "  cargo install tansu --version 0.6.0 --locked --features dynostore --force" >&2
    fi
    exit 1
  fi
  sleep 0.1
done
if ! (exec 3<>"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null; then
  echo "the test broker does not accept connections after 30 s:" >&2
  cat "$kafka_log" >&2
  exit 1
fi
export SSF_TEST_KAFKA="127.0.0.1:$kafka_port"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (all targets, with and without feature kafka, warnings are errors)"
cargo clippy --all-targets --locked --features kafka -- -D warnings
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test (feature kafka, broker at $SSF_TEST_KAFKA)"
cargo test --locked --features kafka
stop_broker
trap - EXIT
echo "==> fuzzing (scripts/fuzz.sh, ${FUZZ_SECONDS:-20} s per target)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
