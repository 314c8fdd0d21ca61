#!/usr/bin/env python3
"""Measure the real transaction gas of a 1000-trade settlement batch on a local anvil.

Same scenario as test/SettlementGas.t.sol (100 accounts, pseudo-random trades netted into
one delta per account and token plus the fee account), but deployed from out/Settlement.json
(build.js) and sent as a real transaction, so the receipt's gasUsed includes intrinsic and
calldata gas. Needs web3 (the project venv) and forge's MockERC20 artifact (`forge build`).

    node build.js && forge build && ../../../.venv/bin/python gas_anvil.py
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eth_abi.abi import encode
from eth_hash.auto import keccak
from web3 import Web3

HERE = Path(__file__).resolve().parent
ANVIL = HERE.parents[2] / "infra/chain/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
ACCOUNTS = 100
TRADES = 1000
MARKET = keccak(b"BTC-USD")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _trades_to_deltas(accounts: Sequence[str], base: str, quote: str, fee_account: str) -> list[tuple[str, str, int]]:
    """Port of SettlementGasTest._batchDeltas (Solidity int division truncates toward zero)."""

    def sdiv(a: int, b: int) -> int:
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q

    base_net = [0] * ACCOUNTS
    quote_net = [0] * ACCOUNTS
    fees = 0
    for t in range(TRADES):
        r = int.from_bytes(keccak(encode(["uint256"], [t])), "big")
        buyer = r % ACCOUNTS
        seller = (buyer + 1 + (r >> 8) % (ACCOUNTS - 1)) % ACCOUNTS
        qty = 10**15 + (r >> 16) % 10**17
        price = 60_000 * 10**6 + (r >> 80) % (1_000 * 10**6)
        notional = sdiv(qty * price, 10**18)
        fee = sdiv(notional, 1000)
        base_net[buyer] += qty
        base_net[seller] -= qty
        quote_net[buyer] -= notional + fee
        quote_net[seller] += notional - fee
        fees += 2 * fee
    deltas = []
    for i, a in enumerate(accounts):
        deltas.append((a, base, base_net[i]))
        deltas.append((a, quote, quote_net[i]))
    deltas.append((fee_account, quote, fees))
    return deltas


def main() -> int:
    settlement_art = json.loads((HERE / "out/Settlement.json").read_text())
    mock_art = json.loads((HERE / "out/forge/MockERC20.sol/MockERC20.json").read_text())
    port = _free_port()
    anvil = subprocess.Popen(
        [str(ANVIL), "--port", str(port), "--accounts", str(ACCOUNTS + 2), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
        for _ in range(100):
            try:
                if w3.is_connected():
                    break
            except Exception:
                pass
            time.sleep(0.1)
        accounts = list(w3.eth.accounts)
        admin, operator, users = accounts[0], accounts[1], accounts[2:ACCOUNTS + 2]
        fee_account = admin

        def send(fn: Any, sender: str) -> Any:
            tx = fn.transact({"from": sender})
            rcpt = w3.eth.wait_for_transaction_receipt(tx)
            assert rcpt["status"] == 1, rcpt
            return rcpt

        def deploy(art: dict[str, Any], *args: Any) -> Any:
            bytecode = art["bytecode"] if isinstance(art["bytecode"], str) else art["bytecode"]["object"]
            c = w3.eth.contract(abi=art["abi"], bytecode=bytecode)
            rcpt = send(c.constructor(*args), admin)
            return w3.eth.contract(address=rcpt["contractAddress"], abi=art["abi"])

        s = deploy(settlement_art, admin, operator, fee_account, 86400)
        base = deploy(mock_art, "Bitcoin", "BTC", 18)
        quote = deploy(mock_art, "US Dollar", "USD", 6)
        for u in users:
            for tok, amt in ((base, 1_000 * 10**18), (quote, 100_000_000 * 10**6)):
                send(tok.functions.mint(u, amt), admin)
                send(tok.functions.approve(s.address, amt), u)
                send(s.functions.deposit(tok.address, amt), u)
        send(s.functions.settleBatch(MARKET, 1, 1, b"\0" * 32, b"\0" * 32, []), operator)

        deltas = _trades_to_deltas(users, base.address, quote.address, fee_account)
        prev = s.functions.lastBatchHash(MARKET).call()
        rcpt = send(
            s.functions.settleBatch(MARKET, 2, TRADES + 1, prev, keccak(b"root"), deltas), operator
        )
        gas = rcpt["gasUsed"]
        print(f"deltas={len(deltas)} trades={TRADES} gasUsed={gas} gas/trade={gas / TRADES:.0f}")
        return 0 if gas <= 4000 * TRADES else 1
    finally:
        anvil.terminate()
        anvil.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
