"""The training loop, optimisers, schedules, checkpoints and hooks. No ComfyUI imports."""

from .hooks import StepInfo, TrainHooks, ValidationImages, combine_hooks
from .loop import Trainer, TrainResult, train_lora
from .tensors import TensorCache, TensorSample

__all__ = ["StepInfo", "TensorCache", "TensorSample", "TrainHooks", "TrainResult", "Trainer", "ValidationImages",
           "combine_hooks", "train_lora"]
