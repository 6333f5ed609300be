"""What every SimpleTuner key handler shares: the settings being built, the report, value conversion
(SimpleTuner's JSON often holds "true" and "1e-4" as strings) and path resolution. No ComfyUI imports."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import KeyReport

_ENV = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Context:
    raw: dict[str, Any]  # config.json with leading "--" stripped from the keys
    base: Path  # folder of config.json
    cwd: Path  # SimpleTuner resolves relative paths against the folder it runs in
    report: KeyReport = field(default_factory=KeyReport)
    out: dict[str, Any] = field(default_factory=dict)  # nested settings for RunConfig.from_dict
    problems: list[str] = field(default_factory=list)
    source: str = "config.json"

    # ------------------------------------------------------------ recording
    def set(self, key: str, value: Any, target: str, ours: Any, note: str = "") -> None:
        """Map `key` (holding `value`) to our dotted `target` (e.g. 'train.lr') with the converted `ours`."""
        section, _, name = target.partition(".")
        if name:
            self.out.setdefault(section, {})[name] = ours
        else:
            self.out[section] = ours
        shown = "" if ours == value else f" = {ours!r}"
        self.report.add(self.source, key, value, "mapped", target=target + shown, note=note)

    def used(self, key: str, value: Any, note: str) -> None:
        self.report.add(self.source, key, value, "used", note=note)

    def ignored(self, key: str, value: Any, note: str) -> None:
        self.report.add(self.source, key, value, "ignored", note=note)

    def problem(self, key: str, what: str, fix: str) -> None:
        self.problems.append(f"{self.source}: {key} {what}. {fix}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    # ------------------------------------------------------------ values
    def as_bool(self, key: str, value: Any) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        self.problem(key, f"must be true or false (got {value!r})", "Write true or false")
        return None

    def as_float(self, key: str, value: Any) -> float | None:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            self.problem(key, f"must be a number (got {value!r})", "Write a number like 1e-4")
            return None

    def as_int(self, key: str, value: Any) -> int | None:
        number = self.as_float(key, value)
        if number is None:
            return None
        if number != int(number):
            self.problem(key, f"must be a whole number (got {value!r})", "Write an integer")
            return None
        return int(number)

    # ------------------------------------------------------------ paths
    def input_path(self, value: str) -> Path:
        """An existing file or folder: absolute, or relative to where SimpleTuner runs, or to config.json."""
        p = Path(os.path.expanduser(value))
        if p.is_absolute():
            return p
        for root in (self.cwd, self.base):
            if (root / p).exists():
                return (root / p).resolve()
        return (self.cwd / p).resolve()

    def output_path(self, value: str) -> Path:
        """A folder that may not exist yet: relative to where SimpleTuner runs (its convention)."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.cwd / p).resolve()


def substitute(value: Any, where: str, problems: list[str]) -> Any:
    """Fill SimpleTuner's `{model_family}` and `{env:NAME}` placeholders in every string of a JSON value."""
    if isinstance(value, dict):
        return {k: substitute(v, f"{where}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def env(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            problems.append(f"{where}: uses {{env:{name}}} but the environment variable {name} is not set. "
                            "Set it, or write the value into the file")
            return ""
        return os.environ[name]

    return _ENV.sub(env, value.replace("{model_family}", "lumina2"))


def strip_dashes(raw: dict[str, Any]) -> dict[str, Any]:
    """config.json keys may keep argparse's leading '--' ("--learning_rate"); SimpleTuner accepts both."""
    return {k[2:] if k.startswith("--") else k: v for k, v in raw.items()}
