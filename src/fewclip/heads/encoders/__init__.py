"""Heads that tune inside the encoders (LoRA, deep prompts): trained on images, not cached features."""
