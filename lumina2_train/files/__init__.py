"""File formats: adapter files (formats), full fine-tune outputs (fullmodel), native <-> diffusers names (keys)."""
