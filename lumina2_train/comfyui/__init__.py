"""The nodes' work inside ComfyUI: the only library package that imports ComfyUI (inside functions)."""
