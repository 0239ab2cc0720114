"""Captioning: caption data sources, caption metrics (CIDEr-D, BLEU-4, CLIPScore), and a frozen CLIP
encoder with a GPT-2 decoder tuned by adapters, prefix tuning or LoRA."""
