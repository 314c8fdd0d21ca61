"""The chain side: artifacts, the deployment record, dev-chain deployment and funding, fees, errors.

**Deployment record.** ``xchg settle deploy`` writes a JSON file (``EXCHANGE_SETTLEMENT_DEPLOYMENT_FILE``,
default ``<runtime_dir>/settlement/deployment-<namespace>.json``) with the Settlement and token
addresses, the chain id, the operator address and the deploy block. Everything downstream (batcher
hashes, submitter, reconciliation) reads it, and the submitter's database rows are keyed by the
Settlement address, so deployments never mix.

**Dev keys.** On a local chain the admin and operator keys are derived from the namespace
(``keccak256("xchg-dev-operator:" + prefix)``) and funded with ``anvil_setBalance``, so parallel
deployments (tests) never share a nonce. A real deployment sets ``EXCHANGE_SETTLEMENT_OPERATOR_KEY``.
Accounts are funded by minting mock tokens to their derived address and depositing from it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from web3 import Web3
from web3.types import TxParams

from connectors.settlement.economics import Asset, account_address, account_key
from connectors.settlement.errors import SettlementError
from streams.settings import Settings

CONTRACTS = Path(__file__).resolve().parent / "contracts"
ESCAPE_PERIOD = 30 * 24 * 3600  # MAX_ESCAPE_PERIOD: a dev chain never opens escape mode by accident
FUNDING_WHOLE_TOKENS = 10**12


@lru_cache(maxsize=4)
def artifact(name: str) -> dict[str, Any]:
    """``out/<name>.json`` from build.js (built on first use: out/ is git-ignored)."""
    path = CONTRACTS / "out" / f"{name}.json"
    if not path.exists():
        result = subprocess.run(["node", "build.js"], cwd=CONTRACTS, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not path.exists():
            raise SettlementError(f"node build.js failed in {CONTRACTS}: {(result.stderr or result.stdout).strip()[-300:]}")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def web3(url: str) -> Web3:
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    return w3


def _error_selectors() -> dict[bytes, tuple[str, list[str]]]:
    out = {}
    for item in artifact("Settlement")["abi"]:
        if item["type"] == "error":
            types = [i["type"] for i in item["inputs"]]
            sig = f"{item['name']}({','.join(types)})"
            out[keccak(sig.encode())[:4]] = (item["name"], types)
    return out


def decode_revert(data: Any) -> tuple[str, tuple[Any, ...]] | None:
    """(error name, args) of a custom-error revert payload (hex str or bytes), or None."""
    from eth_abi.abi import decode

    if isinstance(data, tuple):  # ContractCustomError.args: (message, data)
        data = data[-1]
    if isinstance(data, str):
        try:
            data = bytes.fromhex(data.removeprefix("0x"))
        except ValueError:
            return None
    if not isinstance(data, bytes | bytearray) or len(data) < 4:
        return None
    known = _error_selectors().get(bytes(data[:4]))
    if known is None:
        return None
    name, types = known
    try:
        return name, tuple(decode(types, bytes(data[4:])))
    except Exception:
        return name, ()


@dataclass
class Deployment:
    chain_id: int
    settlement: str
    tokens: dict[str, str]
    operator: str
    admin: str
    fee_account: str
    deploy_block: int
    funded: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise SettlementError(f"no settlement deployment at {path}: run `xchg settle deploy` first") from None


def deployment_path(settings: Settings) -> Path:
    if settings.settlement_deployment_file is not None:
        return settings.settlement_deployment_file
    name = settings.topic_prefix.rstrip(".") or "default"
    return settings.runtime_dir / "settlement" / f"deployment-{name}.json"


def operator_account(settings: Settings) -> LocalAccount:
    key = settings.settlement_operator_key
    account: LocalAccount = Account.from_key(
        key.get_secret_value() if key is not None else keccak(b"xchg-dev-operator:" + settings.topic_prefix.encode()))
    return account


def admin_account(settings: Settings) -> LocalAccount:
    account: LocalAccount = Account.from_key(keccak(b"xchg-dev-admin:" + settings.topic_prefix.encode()))
    return account


def settlement_contract(w3: Web3, address: str) -> Any:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact("Settlement")["abi"])


def token_contract(w3: Web3, address: str) -> Any:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact("MockERC20")["abi"])


class TxSender:
    """Signs and sends dev-chain set-up transactions (deploy, mint, approve, deposit) quickly:
    local nonce counting, fixed fees, receipts awaited at the end."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        self.nonces: dict[str, int] = {}
        self.pending: list[bytes] = []
        self.base_fee: int | None = None
        self.chain_id = 0

    def send(self, account: LocalAccount, tx: dict[str, Any]) -> bytes:
        address = account.address
        if address not in self.nonces:
            self.nonces[address] = self.w3.eth.get_transaction_count(address, "pending")
        if self.base_fee is None:
            self.base_fee = int(self.w3.eth.get_block("latest")["baseFeePerGas"])
            self.chain_id = int(self.w3.eth.chain_id)
        base = self.base_fee
        tx = {"chainId": self.chain_id, "nonce": self.nonces[address], "maxFeePerGas": 4 * base + 10**9,
              "maxPriorityFeePerGas": 10**9, "from": address, **tx}
        if "gas" not in tx:
            tx["gas"] = int(self.w3.eth.estimate_gas(cast(TxParams, tx)) * 3 // 2)
        tx.pop("from")
        raw = account.sign_transaction(tx).raw_transaction
        h = self.w3.eth.send_raw_transaction(raw)
        self.nonces[address] += 1
        self.pending.append(bytes(h))
        return bytes(h)

    def wait(self) -> list[Any]:
        receipts = [self.w3.eth.wait_for_transaction_receipt(Web3.to_hex(h), timeout=120, poll_latency=0.05) for h in self.pending]
        self.pending = []
        for r in receipts:
            if r["status"] != 1:
                raise SettlementError(f"set-up transaction {r['transactionHash'].hex()} reverted")
        return receipts


def _deploy(w3: Web3, sender: TxSender, account: LocalAccount, name: str, *args: Any) -> str:
    art = artifact(name)
    data = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor(*args).data_in_transaction
    sender.send(account, {"data": data})
    receipt = sender.wait()[-1]
    return str(receipt["contractAddress"])


def set_balance(w3: Web3, address: str, wei: int) -> None:
    w3.provider.make_request("anvil_setBalance", [address, hex(wei)])  # type: ignore[arg-type]


def deploy(settings: Settings, assets: dict[str, Asset]) -> Deployment:
    """Deploy one mock token per asset and the Settlement contract on the (local) chain."""
    w3 = web3(settings.chain_rpc_url)
    if not w3.is_connected():
        raise SettlementError(f"no chain answers at {settings.chain_rpc_url} (xchg up, or EXCHANGE_RPC_URL)")
    admin, operator = admin_account(settings), operator_account(settings)
    for a in (admin, operator):
        set_balance(w3, a.address, 10**24)
    sender = TxSender(w3)
    fee_account = account_address(settings.settlement_fee_account)
    start = w3.eth.block_number
    tokens = {s: _deploy(w3, sender, admin, "MockERC20", f"xchg {s}", s, a.decimals) for s, a in sorted(assets.items())}
    settlement = _deploy(w3, sender, admin, "Settlement", admin.address, operator.address, fee_account, ESCAPE_PERIOD)
    deployment = Deployment(int(w3.eth.chain_id), settlement, tokens, operator.address, admin.address,
                            fee_account, start + 1)
    deployment.save(deployment_path(settings))
    return deployment


def rpc_batch(url: str, calls: list[tuple[str, list[Any]]], chunk: int = 500) -> list[Any]:
    """JSON-RPC batch requests (one HTTP round trip per ``chunk`` calls); raises on any error."""
    import requests

    out: list[Any] = []
    for start in range(0, len(calls), chunk):
        body: list[dict[str, Any]] = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                for i, (m, p) in enumerate(calls[start:start + chunk])]
        replies = sorted(requests.post(url, json=body, timeout=300).json(), key=lambda r: r["id"])
        for reply in replies:
            if "error" in reply:
                raise SettlementError(f"{body[reply['id']]['method']} failed: {reply['error'].get('message')}")
        out.extend(r.get("result") for r in replies)
    return out


def fund_accounts(settings: Settings, deployment: Deployment, accounts: list[str],
                  assets: dict[str, Asset], whole_tokens: int = FUNDING_WHOLE_TOKENS,
                  symbols: tuple[str, ...] | None = None) -> int:
    """Mint and deposit ``whole_tokens`` of every asset for each account not funded yet (dev chain).

    Thousands of set-up transactions (mint, approve, deposit per account and asset) would take a
    block each under automine; instead automine is paused, every transaction is sent in JSON-RPC
    batches, blocks are mined until all are in, and automine is restored to what it was."""
    todo = sorted(set(accounts) - set(deployment.funded))
    if not todo:
        return 0
    url = settings.chain_rpc_url
    w3 = web3(url)
    settlement = settlement_contract(w3, deployment.settlement)
    signers = [Account.from_key(account_key(a)) for a in todo]
    rpc_batch(url, [("anvil_setBalance", [a.address, hex(10**22)]) for a in signers])
    tokens = {s: token_contract(w3, t) for s, t in deployment.tokens.items() if symbols is None or s in symbols}
    nonces = [int(n, 16) for n in rpc_batch(url, [("eth_getTransactionCount", [a.address, "pending"]) for a in signers])]
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    calls: list[tuple[str, list[Any]]] = []
    for signer, nonce in zip(signers, nonces, strict=True):
        for symbol, token in sorted(tokens.items()):
            amount = whole_tokens * 10 ** assets[symbol].decimals
            for to, data in ((token.address, token.encode_abi("mint", [signer.address, amount])),
                             (token.address, token.encode_abi("approve", [settlement.address, amount])),
                             (settlement.address, settlement.encode_abi("deposit", [token.address, amount]))):
                # Sent by the node on the account's behalf (anvil impersonation): no Python signing,
                # which costs ~8 ms per transaction with the pure-Python secp256k1 backend.
                calls.append(("eth_sendTransaction", [{
                    "from": signer.address, "to": to, "data": data, "gas": hex(120_000), "nonce": hex(nonce),
                    "maxFeePerGas": hex(4 * base + 10**9), "maxPriorityFeePerGas": hex(10**9)}]))
                nonce += 1
    automine = bool(rpc_batch(url, [("anvil_getAutomine", [])])[0])
    rpc_batch(url, [("evm_setAutomine", [False]), ("anvil_autoImpersonateAccount", [True])])
    try:
        hashes = rpc_batch(url, calls)
        for _ in range(len(calls) // 100 + 20):
            rpc_batch(url, [("anvil_mine", ["0x1"])])
            if int(rpc_batch(url, [("txpool_status", [])])[0]["pending"], 16) == 0:
                break
    finally:
        rpc_batch(url, [("anvil_autoImpersonateAccount", [False]), ("evm_setAutomine", [automine])])
    receipts = rpc_batch(url, [("eth_getTransactionReceipt", [h]) for h in hashes])
    bad = [h for h, r in zip(hashes, receipts, strict=True) if r is None or int(r["status"], 16) != 1]
    if bad:
        raise SettlementError(f"{len(bad)} funding transactions failed or are missing (first {bad[0]})")
    if symbols is None:  # partially funded accounts stay eligible for a full funding later
        deployment.funded = sorted(set(deployment.funded) | set(todo))
    deployment.save(deployment_path(settings))
    return len(todo)


def finalized_block(w3: Web3) -> int:
    """Number of the ``finalized`` block; -1 when the node has none (young chain, or anvil right
    after ``anvil_reorg``, which answers null for the tag until more blocks are mined)."""
    from web3.exceptions import BlockNotFound

    try:
        return int(w3.eth.get_block("finalized")["number"])
    except BlockNotFound:
        return -1


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    priority_fee: int


def suggest_fees(w3: Web3, min_tip: int = 10**9) -> Fees:
    """EIP-1559 from ``eth_feeHistory``: tip = median of recent p50 rewards (at least ``min_tip``),
    max fee = 2 * next block's base fee + tip (absorbs six full blocks of base-fee growth)."""
    history = w3.eth.fee_history(5, "latest", [50])
    next_base = int(history["baseFeePerGas"][-1])
    rewards = sorted(int(r[0]) for r in history.get("reward", []) if r)
    tip = max(min_tip, rewards[len(rewards) // 2] if rewards else 0)
    return Fees(2 * next_base + tip, tip)
