#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one. Installs only what is missing:
#   - Debian packages that -sys crates build against (openssl-sys: libssl-dev, pkg-config)
#   - Python packages the interop tests drive (tests/requirements.txt: jwcrypto, websockets)
# then checks formatting and lints, runs every test, then fuzzes each parser for a bounded time
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

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (all targets, warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked
echo "==> fuzzing (scripts/fuzz.sh, ${FUZZ_SECONDS:-20} s per target)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
