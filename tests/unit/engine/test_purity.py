"""The engine package imports nothing that reads a clock, draws randomness, logs or does I/O."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import streams.engine

ENGINE_DIR = Path(streams.engine.__file__).parent
BANNED = {
    "time", "datetime", "calendar", "random", "secrets", "uuid", "logging", "structlog", "warnings",
    "os", "io", "sys", "pathlib", "shutil", "tempfile", "subprocess", "signal", "socket", "ssl",
    "select", "selectors", "urllib", "http", "asyncio", "threading", "multiprocessing", "concurrent",
    "confluent_kafka", "faust", "psycopg", "psycopg_pool", "web3", "prometheus_client", "stamina",
}  # fmt: skip


def banned_imports(source: str, filename: str) -> list[str]:
    """``module (file:line)`` for every import of a banned module (or a submodule of one)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            names = [
                a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
        found += [
            f"{n} ({filename}:{getattr(node, 'lineno', 0)})" for n in names if n.split(".")[0] in BANNED
        ]
    return found


def test_engine_imports_nothing_impure() -> None:
    files = sorted(ENGINE_DIR.rglob("*.py"))
    assert len(files) >= 4
    found = [hit for f in files for hit in banned_imports(f.read_text(), f.name)]
    assert found == [], f"banned imports in the engine package: {found}"


def test_scanner_catches_banned_imports() -> None:
    code = (
        "import os\nfrom time import monotonic\nimport logging.handlers\nimport json\n__import__('random')\n"
    )
    assert [h.split()[0] for h in banned_imports(code, "x.py")] == [
        "os",
        "time",
        "logging.handlers",
        "random",
    ]


def test_ruff_config_bans_the_same_modules() -> None:
    config = tomllib.loads((ENGINE_DIR / "ruff.toml").read_text())
    assert config["extend"] == "../../pyproject.toml"
    banned = set(config["lint"]["flake8-tidy-imports"]["banned-api"])
    assert banned == BANNED
