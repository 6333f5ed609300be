"""`python -m lumina2_train bench`: speed and memory of our training step against the reference step
(diffusers + PEFT), measured in the same process on the same card (the method in docs/benchmarks.md).

cases.py (what is measured, the speed targets), models.py (random full-size weights, reference steps,
backbones), measure.py (timing, memory, FLOPs, matmul rate), runner.py, report.py, command.py (the CLI).
"""
