#!/usr/bin/env bash
# Builds the TypeScript SDK and runs its tests (node --test) against a real `orbit server`: this
# workspace's debug build, built here first. Installs Node.js when it is missing (as root, with
# apt); needs Node >= 20. Prints a cargo-style "test result:" line for .ci/run's totals.
set -euo pipefail
cd "$(dirname "$0")/../../.."

if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing nodejs npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "The TypeScript SDK's tests need Node.js >= 20 and npm." >&2
    exit 1
  fi
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "The TypeScript SDK needs Node.js >= 20; this machine has $(node --version)." >&2
  exit 1
fi

echo "== TypeScript SDK: cargo build -p orbit-cli, then npm ci && npm test in sdks/typescript"
cargo build -p orbit-cli --locked
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/orbit"
cd sdks/typescript
npm ci --no-audit --no-fund
out=$(mktemp)
set +e
ORBIT_BIN="$bin" npm test >"$out" 2>&1
rc=$?
set -e
cat "$out"
pass=$(awk '/^# pass/ {print $3}' "$out")
fail=$(awk '/^# fail/ {print $3}' "$out")
rm -f "$out"
if [ "$rc" != 0 ] || [ "${pass:-0}" = 0 ]; then verdict=FAILED; else verdict=ok; fi
echo "test result: ${verdict}. ${pass:-0} passed; ${fail:-0} failed; (TypeScript SDK)"
[ "$verdict" = ok ]
