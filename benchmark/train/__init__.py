"""Training: the config, the trainer any defense plugs into, and per-class validation."""
