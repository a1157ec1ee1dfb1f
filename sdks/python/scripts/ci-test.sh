#!/usr/bin/env bash
# Type-checks the Python SDK (mypy --strict) and runs its tests (pytest) against a real `orbit
# server`: this workspace's debug build, built here first. The SDK is installed as a user would
# (pip install sdks/python) into a fresh virtualenv, with every package pinned by
# constraints.txt. Installs Python's venv module when it is missing (as root, with apt); needs
# Python >= 3.10. Prints a cargo-style "test result:" line for .ci/run's totals.
set -euo pipefail
cd "$(dirname "$0")/../../.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing python3 python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python=/usr/bin/python3
  else
    echo "The Python SDK's tests need Python >= 3.10 with its venv module (python3-venv)." >&2
    exit 1
  fi
fi

echo "== Python SDK: cargo build -p orbit-cli, then pip install sdks/python, mypy and pytest"
cargo build -p orbit-cli --locked
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/orbit"
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
export PIP_CONSTRAINT="$PWD/sdks/python/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/pip" install -q "./sdks/python[dev]"
cd sdks/python
"$venv/bin/mypy"
out=$(mktemp)
set +e
ORBIT_BIN="$bin" "$venv/bin/python" -m pytest -p no:cacheprovider -W error::pytest.PytestUnraisableExceptionWarning >"$out" 2>&1
rc=$?
set -e
cat "$out"
summary=$(tail -n 1 "$out")
pass=$({ grep -oE '[0-9]+ passed' <<<"$summary" || true; } | grep -oE '[0-9]+' || true)
fail=$({ grep -oE '[0-9]+ (failed|errors?)' <<<"$summary" || true; } | awk '{s+=$1} END {print s+0}')
rm -f "$out"
if [ "$rc" != 0 ] || [ "${pass:-0}" = 0 ]; then verdict=FAILED; else verdict=ok; fi
echo "test result: ${verdict}. ${pass:-0} passed; ${fail:-0} failed; (Python SDK)"
[ "$verdict" = ok ]
