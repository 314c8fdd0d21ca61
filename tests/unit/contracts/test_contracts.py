"""Settlement contract: build, forge tests and Slither (via check.sh), plus the Python side of
the batch-hash formula that the off-chain batcher must reproduce."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_abi import encode
from eth_hash.auto import keccak

ROOT = Path(__file__).resolve().parents[3]
CONTRACTS = ROOT / "connectors" / "settlement" / "contracts"
ARTIFACT = CONTRACTS / "out" / "Settlement.json"

# Same vector as test_settle_batchHashMatchesOffChainVector in test/Settlement.t.sol.
VECTOR = "0xebe687c9887bbbb1ef7a12bd49d607a045b823c8573d4f7997577b9d6f356e12"


def batch_hash(prev: bytes, market: bytes, first: int, last: int, root: bytes, deltas) -> bytes:
    """keccak256(abi.encode(prev, market, first, last, root, keccak256(abi.encode(deltas))))."""
    deltas_hash = keccak(encode(["(address,address,int256)[]"], [deltas]))
    return keccak(
        encode(
            ["bytes32", "bytes32", "uint64", "uint64", "bytes32", "bytes32"],
            [prev, market, first, last, root, deltas_hash],
        )
    )


def test_batch_hash_formula_matches_solidity_vector():
    token = "0x000000000000000000000000000000000000aaaa"
    deltas = [
        ("0x1111111111111111111111111111111111111111", token, 5),
        ("0x2222222222222222222222222222222222222222", token, -7),
        ("0x3333333333333333333333333333333333333333", token, 2),
    ]
    h = batch_hash(keccak(b"prev"), keccak(b"BTC-USD"), 1001, 2000, keccak(b"root"), deltas)
    assert "0x" + h.hex() == VECTOR


@pytest.mark.timeout(1200)
def test_check_sh_builds_tests_and_analyses():
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the contract toolchain (solc-js, forge shim) needs Node.js")
    proc = subprocess.run(
        ["bash", str(CONTRACTS / "check.sh")],
        cwd=CONTRACTS,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"check.sh failed ({proc.returncode}):\n{output[-8000:]}"
    ran = re.search(r"(\d+) tests passed, (\d+) failed", output)
    assert ran and int(ran.group(1)) >= 44 and ran.group(2) == "0", output[-4000:]
    assert re.search(r"analyzed .* 0 result\(s\) found", output), output[-4000:]

    # The artifact web3.py deploys exposes the documented interface.
    artifact = json.loads(ARTIFACT.read_text())
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000

    def sig(item):
        return f"{item['name']}({','.join(_abi_type(i) for i in item['inputs'])})"

    sigs = {(item["type"], sig(item)) for item in artifact["abi"] if "name" in item}
    expected = {
        ("function", "deposit(address,uint256)"),
        ("function", "requestWithdrawal(address,uint256)"),
        ("function", "claimWithdrawal(uint256)"),
        ("function", "escapeWithdraw(address)"),
        ("function", "settleBatch(bytes32,uint64,uint64,bytes32,bytes32,(address,address,int256)[])"),
        ("function", "heartbeat()"),
        ("event", "BatchSettled(bytes32,uint64,uint64,bytes32,bytes32,bytes32)"),
        ("error", "BatchAlreadySettled(bytes32,uint64,uint64)"),
        ("error", "SequenceGap(bytes32,uint64,uint64)"),
        ("error", "PrevHashMismatch(bytes32,bytes32,bytes32)"),
        ("error", "DeltasDoNotNet(address)"),
        ("error", "InsufficientBalance(address,address)"),
    }
    assert expected <= sigs, sorted(expected - sigs)


def _abi_type(item) -> str:
    if item["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){item['type'][len('tuple'):]}"
    return item["type"]
