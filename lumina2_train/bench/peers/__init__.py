"""Peers timed in the same bench run as our step (`bench --peers`): ComfyUI's built-in TrainLoraNode (from one
or more ComfyUI trees) and kohya sd-scripts' Lumina LoRA step, each on the same seeded random full-size weights
and inputs, each in its own process (two ComfyUIs cannot share one, and kohya's `library` package name is
generic). clock.py times a peer from outside its code; comfyui/peer_trainlora.py (ComfyUI glue) and kohya.py drive the peers as their
own code does; worker.py is the child process; run.py starts the children and renders their rows.
Nothing here imports ComfyUI or kohya at import time.
"""
