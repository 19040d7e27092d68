"""Image towers, LoRA adapters and the dual encoder."""
