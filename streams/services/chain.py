"""anvil, the local EVM node, from the npm packages pinned in ``infra/chain/package-lock.json``.

``npm ci`` installs the platform binaries (npm 11 blocks the wrapper packages' postinstall scripts,
so the launcher calls the platform package's binary directly). ``--slots-in-an-epoch 1`` makes the
``safe``/``finalized`` tags trail the tip by one and two blocks, so finality is reachable in tests.
Ready means ``eth_chainId`` answers with the configured chain id.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from streams.services.errors import ServiceError
from streams.services.prerequisites import require
from streams.services.process import ManagedProcess, wait_until
from streams.settings import PROJECT_ROOT, Settings

CHAIN_DIR = PROJECT_ROOT / "infra" / "chain"
BIN = CHAIN_DIR / "node_modules" / "@foundry-rs"


def tool_path(name: str) -> Path:
    """Path of an npm-installed Foundry binary (``anvil`` or ``forge``)."""
    return BIN / f"{name}-linux-amd64" / "bin" / name


def ensure_node_modules() -> None:
    """``npm ci`` from the lock file when the pinned tools are missing (a no-op afterwards)."""
    if tool_path("anvil").exists() and tool_path("forge").exists() and (CHAIN_DIR / "node_modules" / "solc").exists():
        return
    npm = require("npm")
    require("node")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CHAIN_DIR,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not tool_path("anvil").exists():
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ServiceError(f"npm ci in infra/chain failed: {lines[-1] if lines else result.returncode}")


class Anvil:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        home = settings.runtime_dir / "anvil"
        self.process = ManagedProcess("anvil", home / "anvil.pid", home / "anvil.log",
                                      marker=f"--port {settings.anvil_port}")

    def rpc(self, method: str, params: list[object] | None = None, timeout: float = 3.0) -> object:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        request = urllib.request.Request(self.settings.chain_rpc_url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
        if "error" in reply:
            raise ServiceError(f"anvil: {method} failed: {reply['error'].get('message')}")
        return reply["result"]

    def chain_id(self) -> int | None:
        try:
            result = self.rpc("eth_chainId")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return int(str(result), 16)

    def up(self, timeout: float = 30.0) -> None:
        if self.process.running():
            return
        if self.chain_id() is not None:
            raise ServiceError(
                f"something not started by xchg already answers on {self.settings.chain_rpc_url}: "
                "stop it, or set EXCHANGE_ANVIL_PORT (or EXCHANGE_RPC_URL to use it)"
            )
        ensure_node_modules()
        argv = [
            str(tool_path("anvil")), "--host", "127.0.0.1", "--port", str(self.settings.anvil_port),
            "--chain-id", str(self.settings.chain_id), "--slots-in-an-epoch", "1",
            "--accounts", "10", "--balance", "1000000",
        ]
        self.process.start(argv)

        def ready() -> bool:
            if not self.process.running():
                raise ServiceError(f"anvil exited during start-up: {self.process.log_tail(1)}")
            return self.chain_id() is not None

        if not wait_until(ready, timeout):
            raise ServiceError(f"anvil did not answer eth_chainId within {timeout:.0f}s")
        if self.chain_id() != self.settings.chain_id:
            raise ServiceError(f"anvil answers chain id {self.chain_id()}, expected {self.settings.chain_id}")

    def down(self) -> bool:
        return self.process.stop(timeout=10.0)
