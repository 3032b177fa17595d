"""The kernel: events, bus, plugins, token layout, model, checkpoints, decoding, CLI."""
