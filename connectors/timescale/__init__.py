"""timescale."""
