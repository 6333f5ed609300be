"""User-facing error classes. The message is the UI: ComfyUI shows str(exc) verbatim.

Format: `<file or field>: <what is wrong> (<got>). <how to fix>.` OOM and interrupt keep their own types.
"""

from __future__ import annotations


class Lumina2TrainError(Exception):
    """Base class; the message is shown to the user verbatim."""


class ConfigError(Lumina2TrainError):
    """Every problem found in a config, one line each."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = "Invalid training settings:" if len(self.problems) > 1 else "Invalid training setting:"
        super().__init__(head + "\n" + "\n".join(f"- {p}" for p in self.problems))


class DatasetError(Lumina2TrainError):
    pass


class CacheError(Lumina2TrainError):
    pass


class ModelError(Lumina2TrainError):
    """A model or weights file that is not what we need (not Lumina2, wrong shapes, unreadable)."""


class FormatError(Lumina2TrainError):
    """A LoRA or model file in a format we cannot read or write."""


class CheckpointError(Lumina2TrainError):
    pass


class TrainingError(Lumina2TrainError):
    """A run that cannot go on (NaN loss, ...); the last good state has been saved."""


class OptionalDependencyError(Lumina2TrainError):
    def __init__(self, package: str, feature: str, pip_name: str | None = None):
        super().__init__(
            f"{feature} needs the Python package '{package}', which is not installed. "
            f"Install it into ComfyUI's Python with: pip install {pip_name or package}"
        )


class HubError(Lumina2TrainError):
    """An upload to the Hugging Face Hub failed; the local files are complete and named in the message."""
