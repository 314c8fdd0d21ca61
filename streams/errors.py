"""The project's operator errors: one root and one exit-code convention.

Every failure whose message is written for the operator (it says what is wrong and what to do,
in one line) derives from ``OperatorError``; the command line turns any of them into
``error: <message>`` on stderr and exits with the error's ``exit_code``, in one place
(``streams/cli/errors.py``). Nothing else about them is special: each keeps the built-in base
that describes it (``ValueError`` for bad input, ``RuntimeError`` for a state of the world).

Exit codes of every ``xchg`` command:

- ``0``: done.
- ``1`` (``EXIT_OPERATOR``): an operator error: bad configuration or input, a refused request, a
  service that does not answer. Fix what the message says and run again.
- ``2`` (``EXIT_USAGE``): a usage error (typer's), or a check that found what it checks for and
  cannot fix: drift ``xchg topics apply`` cannot repair, mismatches found by a verification, a
  conformance scenario that fails.
- ``3`` (``EXIT_STREAM_STOPPED``): a stream process stopped because it cannot go on safely
  (``StreamStopped``: a fenced static member, a state whose hash disagrees, input deleted by
  retention, outputs the broker refuses). A process manager restarts it; an operator looks.
- ``70`` (``EXIT_AGENT_CRASHED``, EX_SOFTWARE): a fault in the code on a record (a crashed
  stream agent); the process manager restarts it, and it is a bug to report.
"""

from __future__ import annotations

EXIT_OPERATOR = 1
EXIT_USAGE = 2
EXIT_STREAM_STOPPED = 3
EXIT_AGENT_CRASHED = 70


class OperatorError(Exception):
    """A failure with a message written for the operator (see the module doc)."""

    exit_code = EXIT_OPERATOR


class StreamStopped(OperatorError):
    """A stream process cannot go on and must exit for a restart (see the module doc)."""

    exit_code = EXIT_STREAM_STOPPED
