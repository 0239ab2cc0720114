"""Heads trained on cached image features (the encoders run once, in the features stage)."""
