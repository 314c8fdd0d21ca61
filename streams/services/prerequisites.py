"""Checks for the tools the local services need, each failing with the command that fixes it."""

from __future__ import annotations

import re
import shutil
import subprocess

from streams.services.errors import ServiceError

FIXES = {
    "java": "install a JDK 17 or newer (Debian: apt-get install -y openjdk-17-jre-headless)",
    "mvn": "install Maven (Debian: apt-get install -y maven)",
    "node": "install Node.js 20 or newer with npm (Debian: apt-get install -y nodejs npm)",
    "npm": "install npm (Debian: apt-get install -y npm)",
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ServiceError(f"{tool} not found on PATH: {FIXES.get(tool, 'install it')}")
    return path


def java_major() -> int:
    """The major version of ``java`` on the PATH (Kafka 4.x brokers need 17+)."""
    java = require("java")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise ServiceError(f"cannot read the Java version from `java -version`: {out.strip()[:80]}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_java(minimum: int = 17) -> str:
    major = java_major()
    if major < minimum:
        raise ServiceError(f"Java {major} found but Kafka 4 needs Java {minimum}+: {FIXES['java']}")
    return require("java")
