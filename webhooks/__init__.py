"""GitHub → Slipway. The pure parts (signatures, events, routing) do no I/O."""
