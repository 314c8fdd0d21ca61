"""Detached service processes tracked by PID files under the runtime folder.

A process is "ours" only while its PID file exists *and* ``/proc/PID/cmdline`` still contains the
marker we started it with, so a recycled PID is never mistaken for a live service (or signalled).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streams.services.errors import ServiceError


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    pid_file: Path
    log_file: Path
    marker: str  # a string that appears in the command line of the real process

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
        if self.marker not in cmdline:
            return None
        return pid

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        """Start detached in its own session, stdout/stderr appended to the log file."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                )
            except FileNotFoundError as error:
                raise ServiceError(f"{self.name}: cannot execute {argv[0]}: {error.strerror}") from None
        self.pid_file.write_text(f"{proc.pid}\n")
        # Right after the spawn /proc/PID/cmdline can still be empty; wait until it names the
        # program, so that running() is truthful from the moment start() returns.
        wait_until(lambda: proc.poll() is not None or self.pid() is not None, timeout=5.0, interval=0.01)
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if self.running():
            _signal(pid, signal.SIGKILL)
            while self.running():
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status when the service is our own child (started in this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(check: object, timeout: float, interval: float = 0.25) -> bool:
    """Poll ``check()`` until it returns truthy or ``timeout`` passes (used for readiness)."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
