"""Datasets: caption strategies, normalisation, tag shuffling, several datasets, repeats, fingerprints."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from lumina2_train.data import normalise_caption, shuffle_tags
from lumina2_train.errors import DatasetError

from builders import scan


def captions(handle) -> dict[str, str]:
    return {Path(i.path).name: i.caption for i in handle.items}


def test_textfile_captions_nested_and_formats(good_folder, make_dataset):
    h = scan(make_dataset(good_folder))
    assert captions(h) == {"wide.png": "a wide photo, red, blue", "tall.jpg": "a tall photo",
                           "square.webp": "a square photo", "deep.bmp": "a nested photo"}
    assert h.report.found == 4 and not h.report.skipped and h.report.errors() == []
    assert h.require_usable() is h
    flat = scan(make_dataset(good_folder, recursive=False))
    assert "deep.bmp" not in captions(flat)


def test_caption_extension_and_normalisation(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "a.png", caption=None)
    (tmp_path / "a.caption").write_bytes("\ufeff  two\nlines\u00a0and\t tabs  ".encode())
    h = scan(make_dataset(tmp_path, caption_extension="caption"))
    assert captions(h) == {"a.png": "two lines and tabs"}
    assert normalise_caption("  a \n b  ") == "a b"


def test_filename_and_instance_strategies(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "red_fox_in_snow.png", caption=None)
    assert captions(scan(make_dataset(tmp_path, caption_strategy="filename"))) == {
        "red_fox_in_snow.png": "red fox in snow"}
    h = scan(make_dataset(tmp_path, caption_strategy="instance", instance_prompt=" photo of sks dog "))
    assert captions(h) == {"red_fox_in_snow.png": "photo of sks dog"}


def test_jsonl_metadata(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "img" / "a.png", caption=None)
    write_image(tmp_path / "img" / "b.png", caption=None)
    write_image(tmp_path / "img" / "c.png", caption=None)
    lines = [{"file_name": "img/a.png", "caption": "first"}, {"path": "./img/b.png", "text": " second "},
             "not json", {"file_name": "img/ghost.png", "caption": "no such file"}]
    (tmp_path / "meta.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    h = scan(make_dataset(tmp_path, caption_strategy="jsonl", metadata_file="meta.jsonl", missing_caption="skip"))
    assert captions(h) == {"a.png": "first", "b.png": "second"}
    reasons = {Path(s.path).name: s.reason for s in h.report.skipped}
    assert "not valid JSON" in reasons["meta.jsonl:3"]
    assert "listed in 'meta.jsonl' line 4 but no such image" in reasons["ghost.png"]
    assert "no line for this image in 'meta.jsonl'" in reasons["c.png"]
    with pytest.raises(DatasetError, match=r"meta\.jsonl:3: not valid JSON"):
        h.require_usable()  # invalid_caption defaults to 'error'


def test_csv_metadata(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "a.png", caption=None)
    write_image(tmp_path / "b.png", caption=None)
    (tmp_path / "meta.csv").write_text('file_name,caption\na.png,"a cat, sitting"\nb.png,\n')
    h = scan(make_dataset(tmp_path, caption_strategy="csv", metadata_file="meta.csv", empty_caption="skip"))
    assert captions(h) == {"a.png": "a cat, sitting"}
    assert [s.kind for s in h.report.skipped] == ["empty_caption"]
    (tmp_path / "bad.csv").write_text("name,words\na.png,x\n")
    bad = scan(make_dataset(tmp_path, caption_strategy="csv", metadata_file="bad.csv"))
    assert "no image-path or no caption column (got name, words)" in bad.report.problems[0]
    (tmp_path / "nul.csv").write_bytes(b"file_name,caption\na.png,x\x00y\n")
    nul = scan(make_dataset(tmp_path, caption_strategy="csv", metadata_file="nul.csv"))
    assert "NUL bytes" in nul.report.problems[0]
    missing = scan(make_dataset(tmp_path, caption_strategy="jsonl", metadata_file="nope.jsonl"))
    assert "metadata file not found" in missing.report.problems[0] and missing.items == ()


def test_tag_shuffle_keeps_first_n_and_is_seeded(tmp_path, write_image, make_dataset):
    tags = ", ".join(f"tag{i}" for i in range(12))
    write_image(tmp_path / "a.png", caption="sks person, " + tags)
    cfg = make_dataset(tmp_path, shuffle_tags=True, keep_tags=1)
    first, again, other = (captions(scan(cfg, seed=s))["a.png"] for s in (0, 0, 1))
    assert first == again != other
    assert first.startswith("sks person, ") and sorted(first.split(", ")) == sorted(("sks person, " + tags).split(", "))
    assert shuffle_tags("no commas here", 0, random.Random(0)) == "no commas here"


def test_several_datasets_repeats_regularisation(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "subject" / "a.png", (64, 64), caption="sks dog")
    write_image(tmp_path / "reg" / "b.png", (64, 64), caption="a dog")
    h = scan(make_dataset(tmp_path / "subject", repeats=5, resolution=64),
             make_dataset(tmp_path / "reg", is_regularisation=True, loss_weight=0.5, resolution=128, flip=True))
    a, b = h.items
    assert (a.dataset_index, a.repeats, a.is_regularisation, a.bucket, a.flip) == (0, 5, False, (64, 64), False)
    assert (b.dataset_index, b.repeats, b.is_regularisation, b.loss_weight, b.bucket, b.flip) == (
        1, 1, True, 0.5, (128, 128), True)
    assert h.report.buckets == {"64x64": 1, "128x128": 1}
    assert [len(d.used) for d in h.report.datasets] == [1, 1]


def test_fingerprint_is_stable_and_follows_content(good_folder, make_dataset):
    cfg = make_dataset(good_folder)
    first = scan(cfg)
    assert scan(cfg).fingerprint == first.fingerprint and scan(cfg).items == first.items
    (good_folder / "tall.txt").write_text("a different caption")
    changed = scan(cfg)
    assert changed.fingerprint != first.fingerprint
    diff = [a for a, b in zip(first.items, changed.items) if a != b]
    assert [Path(d.path).name for d in diff] == ["tall.jpg"]


def test_image_fingerprint_is_sha256_of_bytes(good_folder, make_dataset):
    import hashlib

    item = scan(make_dataset(good_folder)).items[0]
    assert item.image_fingerprint == hashlib.sha256(Path(item.path).read_bytes()).hexdigest()[:16]


def test_mask_strategies_are_recorded_per_item(good_folder, make_dataset):
    h = scan(make_dataset(good_folder, mask_strategy="alpha"))
    assert h.items and all(i.mask_source == "alpha" for i in h.items)
    assert all(i.mask_source == "" for i in scan(make_dataset(good_folder)).items)


def test_require_usable_lists_at_most_twenty(tmp_path, write_image, make_dataset):
    for i in range(25):
        write_image(tmp_path / f"n{i:02d}.png", caption=None)
    with pytest.raises(DatasetError) as info:
        scan(make_dataset(tmp_path)).require_usable()
    message = str(info.value)
    assert "(25 problems)" in message and "and 5 more" in message and message.count("no caption file") == 20


def test_handle_is_frozen_and_picklable(good_folder, make_dataset):
    import pickle

    h = scan(make_dataset(good_folder))
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.items[0].caption = "x"
    assert pickle.loads(pickle.dumps(h)) == h
