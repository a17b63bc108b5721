"""The offline demo: Slipway's main job end to end, without GitHub."""
