"""The exchange's domain model, free of I/O: commands, events, market specifications and their
integer units (prices in ticks, quantities in lots)."""
