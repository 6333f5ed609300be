"""Captions by strategy (textfile, filename, jsonl, csv, instance), normalisation and tag shuffling.

Returns what it found and what is wrong; the scan applies the dataset's policies. Reads only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..config import DatasetConfig
from .report import Skipped

PATH_KEYS = ("file_name", "path", "file", "image", "filename")  # first present wins
CAPTION_KEYS = ("caption", "text", "prompt")


@dataclass(frozen=True)
class CaptionResult:
    caption: str | None  # normalised text, or None when there is a problem
    kind: str = ""  # '' | missing_caption | empty_caption | invalid_caption
    reason: str = ""


def normalise_caption(text: str) -> str:
    """Trim, and fold every run of whitespace (newlines, tabs, non-breaking spaces) to one space."""
    return " ".join(text.split())


def shuffle_tags(caption: str, keep: int, rng: random.Random) -> str:
    """Shuffle comma-separated tags, keeping the first `keep` in place. Captions without commas are unchanged."""
    tags = [t.strip() for t in caption.split(",")]
    tags = [t for t in tags if t]
    if len(tags) < 2:
        return caption
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def decode_text(data: bytes, fix: str = "") -> tuple[str | None, str]:
    """UTF-8 (BOM allowed) -> (text, ''), or (None, 'is not UTF-8 (byte 0x.. at offset N). Re-save ...')."""
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as e:
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        return None, (f"is not UTF-8 (byte 0x{data[offset]:02x} at offset {offset}). "
                      f"Re-save it as UTF-8{fix}.")


class CaptionSource:
    """Looks up the caption of each image of one dataset. Metadata files are parsed once, here."""

    def __init__(self, ds: DatasetConfig, root: Path):
        self.ds = ds
        self.root = root
        self.problems: list[str] = []  # dataset-level (metadata file missing, wrong columns, not UTF-8)
        self.skipped: list[Skipped] = []  # bad metadata lines
        self.table: dict[str, tuple[object, int]] = {}  # normalised path -> (caption value, line number)
        self.meta_path: Path | None = None
        if ds.caption_strategy in ("jsonl", "csv"):
            self._load_metadata()

    # ------------------------------------------------------------------ lookup

    def caption_for(self, image: Path) -> CaptionResult:
        strategy = self.ds.caption_strategy
        if strategy == "instance":
            return self._checked(self.ds.instance_prompt, "instance_prompt")
        if strategy == "filename":
            return self._checked(image.stem.replace("_", " "), f"file name '{image.name}'")
        if strategy == "textfile":
            return self._from_textfile(image)
        return self._from_metadata(image)

    def caption_file(self, image: Path) -> Path:
        ext = self.ds.caption_extension
        return image.with_suffix(ext if ext.startswith(".") else "." + ext)

    def _checked(self, text: str, where: str) -> CaptionResult:
        caption = normalise_caption(text)
        if caption:
            return CaptionResult(caption)
        return CaptionResult(None, "empty_caption", f"caption from {where} is empty. Write a caption, or set "
                             "empty_caption to 'empty' (train with no caption) or 'skip'.")

    def _from_textfile(self, image: Path) -> CaptionResult:
        path = self.caption_file(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return CaptionResult(None, "missing_caption", f"no caption file ('{path.name}' not found next to the "
                                 "image). Write one, or set missing_caption to 'empty' or 'skip'.")
        except OSError as e:
            return CaptionResult(None, "invalid_caption", f"caption file '{path.name}' cannot be read "
                                 f"({e.strerror or e}). Fix its permissions, or set invalid_caption to 'skip'.")
        text, reason = decode_text(data, ", or set invalid_caption to 'skip'")
        if text is None:
            return CaptionResult(None, "invalid_caption", f"caption file '{path.name}' {reason}")
        return self._checked(text, f"'{path.name}'")

    def _from_metadata(self, image: Path) -> CaptionResult:
        meta = self.meta_path.name if self.meta_path else self.ds.metadata_file
        found = self.table.get(self.key_for(image)) or self.table.get(os.path.normpath(str(image)))
        if found is None:
            return CaptionResult(None, "missing_caption", f"no line for this image in '{meta}' (looked for "
                                 f"'{self.key_for(image)}'). Add one, or set missing_caption to 'empty' or 'skip'.")
        value, line = found
        if value is None:
            return CaptionResult(None, "missing_caption", f"'{meta}' line {line} has no caption. Add one, or set "
                                 "missing_caption to 'empty' or 'skip'.")
        if not isinstance(value, str):
            return CaptionResult(None, "invalid_caption", f"'{meta}' line {line} has a caption that is not text "
                                 f"({value!r}). Write it as a string, or set invalid_caption to 'skip'.")
        return self._checked(value, f"'{meta}' line {line}")

    def key_for(self, image: Path) -> str:
        """The path a metadata file names `image` by: relative to the dataset folder (posix)."""
        try:
            return image.relative_to(self.root).as_posix()
        except ValueError:
            return os.path.normpath(str(image))

    # ------------------------------------------------------------------ metadata files

    def _resolve_metadata(self) -> Path | None:
        given = Path(self.ds.metadata_file).expanduser()
        for candidate in ([given] if given.is_absolute() else [self.root / given, given]):
            if candidate.is_file():
                return candidate
        self.problems.append(f"{given}: metadata file not found (looked in {self.root} and the working folder). "
                             "Give the path of the .jsonl/.csv file with path and caption columns.")
        return None

    def _load_metadata(self) -> None:
        self.meta_path = self._resolve_metadata()
        if self.meta_path is None:
            return
        text, reason = decode_text(self.meta_path.read_bytes())
        if text is None:
            self.problems.append(f"{self.meta_path}: metadata file {reason}")
            return
        if self.ds.caption_strategy == "csv" and "\x00" in text:
            self.problems.append(f"{self.meta_path}: metadata file contains NUL bytes, so it is not a text CSV "
                                 "file. Save it again from a spreadsheet as CSV UTF-8.")
            return
        if self.ds.caption_strategy == "csv" and not self._csv_header_ok(text):
            return
        rows = _jsonl_rows(text) if self.ds.caption_strategy == "jsonl" else _csv_rows(text)
        try:
            for line, row, error in rows:
                if error:
                    self._bad_line(line, error)
                    continue
                self._add_row(line, row)
        except csv.Error as e:
            self.problems.append(f"{self.meta_path}: metadata file is not valid CSV ({e}). Fix it, or save it "
                                 "again from a spreadsheet as CSV UTF-8.")

    def _csv_header_ok(self, text: str) -> bool:
        header = [h.strip() for h in next(csv.reader(io.StringIO(text)), [])]
        if any(k in header for k in PATH_KEYS) and any(k in header for k in CAPTION_KEYS):
            return True
        self.problems.append(f"{self.meta_path}: the CSV header has no image-path or no caption column (got "
                             f"{', '.join(header) or 'an empty file'}). Name them 'file_name' and 'caption'.")
        return False

    def _add_row(self, line: int, row: dict) -> None:
        path_key = next((k for k in PATH_KEYS if k in row), None)
        if path_key is None or not isinstance(row[path_key], str) or not row[path_key].strip():
            self._bad_line(line, f"no image path (expected one of the keys {', '.join(PATH_KEYS)}; got keys "
                           f"{', '.join(map(str, row)) or 'none'}). Add the image path")
            return
        caption = next((row[k] for k in CAPTION_KEYS if k in row), None)
        key = os.path.normpath(row[path_key].strip()).replace(os.sep, "/")
        if Path(key).is_absolute():
            key = self.key_for(Path(key))
        if key in self.table:
            first = self.table[key][1]
            self.skipped.append(Skipped(f"{self.meta_path}:{line}", f"'{key}' is listed again (first on line "
                                        f"{first}, whose caption is used). Remove one of the lines.",
                                        "duplicate_stem", self.ds.duplicate_stem == "error"))
            return
        self.table[key] = (caption, line)

    def _bad_line(self, line: int, what: str) -> None:
        self.skipped.append(Skipped(f"{self.meta_path}:{line}", f"{what}. Fix the line, or set invalid_caption "
                                    "to 'skip' to ignore it.", "metadata", self.ds.invalid_caption == "error"))

    def unmatched(self, matched: set[str]) -> list[tuple[str, int]]:
        """Metadata entries whose image was not found: (path as written, line)."""
        return [(k, line) for k, (_, line) in self.table.items() if k not in matched]


def _jsonl_rows(text: str):
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            yield n, {}, f"not valid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(row, dict):
            yield n, {}, f"not a JSON object (got {type(row).__name__})"
        else:
            yield n, row, ""


def _csv_rows(text: str):
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        line = reader.line_num
        clean = {(k or "").strip(): v for k, v in row.items() if k is not None}
        yield line, clean, ""
