"""``python -m streams.cli``: the same as the ``xchg`` console script."""

from streams.cli import app

app()
