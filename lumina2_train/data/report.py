"""The dataset scan report: what was found, used and skipped (with the reason per file), bucket counts.

A report never raises; `DatasetHandle.require_usable()` turns the entries marked `is_error` (the policy
for that problem is 'error') and dataset-level problems into one DatasetError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Skipped:
    """One file (or folder entry) that is not used, and why."""

    path: str
    reason: str  # '<what is wrong> (<got>). <how to fix>.'
    kind: str  # bad_image | too_small | aspect | missing_caption | empty_caption | invalid_caption |
    #            duplicate_stem | symlink_loop | metadata
    is_error: bool  # the dataset's policy for this kind is 'error': training refuses to start

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "kind": self.kind, "is_error": self.is_error}


@dataclass(frozen=True)
class DatasetReport:
    """One dataset folder's share of the scan."""

    path: str
    found: int  # image files seen (by extension)
    used: tuple[str, ...]
    skipped: tuple[Skipped, ...]
    buckets: dict[str, int]  # 'WxH' -> images
    problems: tuple[str, ...] = ()  # dataset-level: missing folder, no images, bad metadata file
    ignored: int = 0  # non-image files (captions, metadata, other extensions)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "found": self.found, "used": list(self.used),
                "skipped": [s.as_dict() for s in self.skipped], "buckets": dict(self.buckets),
                "problems": list(self.problems), "ignored": self.ignored}


@dataclass(frozen=True)
class ScanReport:
    datasets: tuple[DatasetReport, ...] = field(default_factory=tuple)

    @property
    def found(self) -> int:
        return sum(d.found for d in self.datasets)

    @property
    def used(self) -> tuple[str, ...]:
        return tuple(p for d in self.datasets for p in d.used)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return tuple(s for d in self.datasets for s in d.skipped)

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(p for d in self.datasets for p in d.problems)

    @property
    def buckets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.datasets:
            for name, n in d.buckets.items():
                out[name] = out.get(name, 0) + n
        return dict(sorted(out.items(), key=lambda kv: _bucket_order(kv[0])))

    def errors(self) -> list[str]:
        """Everything that stops training under the configured policies, one line each."""
        out = list(self.problems)
        out += [f"{s.path}: {s.reason}" for s in self.skipped if s.is_error]
        if not self.used and not out:
            out.append("dataset: no usable image in any dataset folder (see the skipped files). "
                       "Fix the files listed, or relax the size, aspect or caption settings.")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"found": self.found, "used": list(self.used), "skipped": [s.as_dict() for s in self.skipped],
                "buckets": self.buckets, "problems": list(self.problems), "errors": self.errors(),
                "datasets": [d.as_dict() for d in self.datasets]}

    def as_text(self) -> str:
        """A human-readable multi-line summary (the `scan` command's output)."""
        lines = []
        for d in self.datasets:
            lines.append(f"Dataset {d.path}: {d.found} images found, {len(d.used)} used, {len(d.skipped)} skipped"
                         + (f", {d.ignored} other files ignored" if d.ignored else ""))
            lines += [f"  problem: {p}" for p in d.problems]
            for s in d.skipped:
                lines.append(f"  skipped{' [error]' if s.is_error else ''}: {s.path}: {s.reason}")
        lines.append(f"Total: {self.found} found, {len(self.used)} used, {len(self.skipped)} skipped")
        lines.append("Buckets (width x height: images):")
        lines += [f"  {name}: {n}" for name, n in self.buckets.items()] or ["  (none)"]
        errs = self.errors()
        if errs:
            lines.append(f"{len(errs)} problem(s) would stop training under the current policies:")
            lines += [f"  - {e}" for e in errs]
        return "\n".join(lines)


def bucket_name(bucket: tuple[int, int]) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def _bucket_order(name: str) -> tuple[int, int]:
    w, _, h = name.partition("x")
    return int(w) * int(h), int(w)
