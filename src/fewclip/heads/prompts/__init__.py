"""Heads that learn prompts read through the frozen text tower (image features cached)."""
