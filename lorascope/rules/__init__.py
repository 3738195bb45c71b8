"""Rules: one family per module; each registers with registry.rule."""
