#!/usr/bin/env bash
# Build, test and statically analyse the settlement contract, fully offline except for the
# one-time Slither install from PyPI. Exits non-zero on the first failure.
#
#   1. node build.js      -> out/Settlement.json (abi + bytecode for web3.py)
#   2. forge test         -> unit, gas and invariant tests (foundry.toml: offline, solc-js shim)
#   3. slither            -> static analysis of src/Settlement.sol (slither.config.json)
#
# Environment overrides: FORGE (forge binary), SLITHER (slither binary), PYTHON (to create
# the Slither venv, default python3), XCHG_CHAIN_NODE_MODULES (default infra/chain/node_modules).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
MODULES="${XCHG_CHAIN_NODE_MODULES:-$ROOT/infra/chain/node_modules}"
SLITHER_VERSION="0.11.6"

die() { echo "check.sh: $*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node is not installed"
[ -d "$MODULES/solc" ] || die "solc-js missing: run 'npm ci' in infra/chain"

FORGE="${FORGE:-$MODULES/@foundry-rs/forge-linux-amd64/bin/forge}"
if [ ! -x "$FORGE" ]; then
  FORGE="$(command -v forge || true)"
  [ -n "$FORGE" ] || die "forge missing: run 'npm ci' in infra/chain"
fi
# crytic-compile (Slither) calls `forge config` when it sees foundry.toml.
export PATH="$(dirname "$FORGE"):$PATH"
export FOUNDRY_OFFLINE=true

cd "$HERE"

echo "== [1/3] build (solc-js)"
node build.js

echo "== [2/3] forge test"
start=$(date +%s)
"$FORGE" test
echo "forge test took $(( $(date +%s) - start ))s"

echo "== [3/3] slither"
SLITHER="${SLITHER:-}"
if [ -z "$SLITHER" ]; then
  VENV="$HERE/.slither-venv"
  if ! "$VENV/bin/slither" --version 2>/dev/null | grep -qx "$SLITHER_VERSION"; then
    # Own venv: slither-analyzer pins web3<8, the project pins web3==8, so it cannot share .venv.
    echo "installing slither-analyzer==$SLITHER_VERSION into $VENV"
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "slither-analyzer==$SLITHER_VERSION"
  fi
  SLITHER="$VENV/bin/slither"
fi
# Settings (compiler shim, framework, filters, fail level) come from slither.config.json.
"$SLITHER" slither-input.json --config-file slither.config.json

echo "check.sh: OK"
