"""Captioning: a frozen CLIP image encoder, a GPT-2 decoder tuned by adapters, prefix tuning or LoRA."""
