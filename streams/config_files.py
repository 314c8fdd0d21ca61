"""The project's declarative YAML files (markets, topics, settlement assets), read with one-line
errors: a missing file names the setting that points at it, invalid YAML says why, and a file
without its top-level section says what was expected. Each caller passes its own error type, so
the CLI reports it like any other operator error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_section(path: Path, section: str, expected: type[list[Any]] | type[dict[str, Any]], what: str,
                 env_var: str, error: type[Exception]) -> Any:
    """``path``'s top-level ``section``, which must be a list or a mapping as ``expected``."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} not found ({env_var})") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get(section), expected):
        shape = "list" if expected is list else "mapping"
        raise error(f"{what} {path}: expected a top-level '{section}:' {shape}")
    return raw
