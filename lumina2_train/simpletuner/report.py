"""The key report of a SimpleTuner import: for every key read, whether it was used, mapped to one of our
settings, or ignored, and why. No ComfyUI imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("mapped", "used", "ignored")


@dataclass(frozen=True)
class KeyEntry:
    source: str  # "config.json", "multidatabackend.json[<id>]", "lycoris_config.json"
    key: str
    value: Any
    status: str  # mapped: sets `target`; used: read by the importer itself; ignored: see `note`
    target: str = ""  # our dotted setting(s), e.g. "train.lr"
    note: str = ""  # how the value was converted, or why the key was ignored

    def as_line(self) -> str:
        shown = repr(self.value) if len(repr(self.value)) <= 60 else repr(self.value)[:57] + "..."
        text = f"  {self.status:<8}{self.key} = {shown}"
        if self.target:
            text += f" -> {self.target}"
        return text + (f" ({self.note})" if self.note else "")


@dataclass
class KeyReport:
    entries: list[KeyEntry] = field(default_factory=list)

    def add(self, source: str, key: str, value: Any, status: str, *, target: str = "", note: str = "") -> None:
        self.entries.append(KeyEntry(source, key, value, status, target=target, note=note))

    def find(self, key: str, source: str | None = None) -> KeyEntry:
        """The entry of `key` (the last one, if a key was reported twice); KeyError if it was never reported."""
        for e in reversed(self.entries):
            if e.key == key and (source is None or e.source == source):
                return e
        raise KeyError(key)

    def counts(self) -> dict[str, int]:
        return {s: sum(e.status == s for e in self.entries) for s in STATUSES}

    def as_text(self) -> str:
        c = self.counts()
        lines = [f"SimpleTuner import: {len(self.entries)} keys: {c['mapped']} mapped to our settings, "
                 f"{c['used']} used by the importer, {c['ignored']} ignored"]
        for source in dict.fromkeys(e.source for e in self.entries):
            lines.append(f"{source}:")
            lines += [e.as_line() for e in self.entries if e.source == source]
        return "\n".join(lines)
