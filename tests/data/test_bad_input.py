"""Bad input: each problem with real files, its reason in the report, and the policy that applies."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lumina2_train import cli
from lumina2_train.data import scan_command
from lumina2_train.errors import ConfigError, DatasetError

from builders import scan


def only_skip(handle, name):
    """The one Skipped entry whose path ends with `name`."""
    hits = [s for s in handle.report.skipped if s.path.endswith(name)]
    assert len(hits) == 1, [s.path for s in handle.report.skipped]
    return hits[0]


def is_root_like() -> bool:
    """True when chmod 000 does not stop this process reading (root, CAP_DAC_OVERRIDE)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------- broken image files


def test_zero_byte_file(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.txt").write_text("cap")
    h = scan(make_dataset(tmp_path))
    s = only_skip(h, "empty.png")
    assert s.kind == "bad_image" and "empty file (0 bytes)" in s.reason and not s.is_error
    assert [Path(p).name for p in h.report.used] == ["ok.png"]
    h.require_usable()  # default bad_image policy 'skip': reported, not fatal


def test_truncated_jpeg(tmp_path, write_image, make_dataset):
    good = write_image(tmp_path / "src.jpg", (64, 64), quality=95)
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.txt").write_text("cap")
    s = only_skip(scan(make_dataset(tmp_path)), "cut.jpg")
    assert "truncated or corrupt" in s.reason and "Re-export" in s.reason


def test_text_file_named_png(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png")
    (tmp_path / "notes.png").write_text("these are my notes, not a picture")
    (tmp_path / "notes.txt").write_text("cap")
    s = only_skip(scan(make_dataset(tmp_path)), "notes.png")
    assert "not an image" in s.reason and "these ar" in s.reason


def test_bad_image_policy_error_stops_training(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    h = scan(make_dataset(tmp_path, bad_image="error"))
    assert only_skip(h, "empty.png").is_error
    with pytest.raises(DatasetError, match=r"empty\.png: empty file"):
        h.require_usable()


def test_image_below_minimum_size(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png", (64, 64))
    write_image(tmp_path / "tiny.png", (12, 40))
    s = only_skip(scan(make_dataset(tmp_path, min_size_px=16)), "tiny.png")
    assert s.kind == "too_small" and "12x40" in s.reason and "min_size_px 16" in s.reason


def test_extreme_aspect_ratio(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png", (64, 64))
    write_image(tmp_path / "banner.png", (400, 20))
    s = only_skip(scan(make_dataset(tmp_path)), "banner.png")
    assert s.kind == "aspect" and "20.0:1" in s.reason and "max_aspect_ratio" in s.reason


def test_unreadable_file(tmp_path, write_image, make_dataset):
    locked = write_image(tmp_path / "locked.png")
    write_image(tmp_path / "ok.png")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not block reads here, so the "
                        "unreadable-file check cannot be exercised; every other bad-input check still runs")
        s = only_skip(scan(make_dataset(tmp_path)), "locked.png")
        assert s.kind == "bad_image" and "cannot be read" in s.reason and "permission" in s.reason.lower()
    finally:
        locked.chmod(0o644)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_a_144_megapixel_image_is_refused_before_it_is_decoded(tmp_path, write_image, make_dataset, policy):
    """Fails before the fix: the whole 12000x12000 image was decoded (only Pillow's warning said anything)."""
    from PIL import Image

    write_image(tmp_path / "ok.png")
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png", compress_level=1)  # 144 MP in ~80 KB
    (tmp_path / "huge.txt").write_text("a huge picture")
    h = scan(make_dataset(tmp_path, bad_image=policy))
    s = only_skip(h, "huge.png")
    assert s.kind == "bad_image" and s.is_error == (policy == "error")
    assert "image too large (12000x12000 px = 144.0 MP, more than data.datasets[0].max_image_pixels " \
           "80,000,000). Downscale it, or raise data.datasets[0].max_image_pixels." in s.reason
    if policy == "error":
        with pytest.raises(DatasetError, match=r"huge\.png: image too large"):
            h.require_usable()


def test_max_image_pixels_is_the_documented_limit(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "a.png", (64, 48))
    write_image(tmp_path / "b.png", (32, 32))
    h = scan(make_dataset(tmp_path, max_image_pixels=32 * 32))
    assert [Path(p).name for p in h.report.used] == ["b.png"]
    assert "64x48 px" in only_skip(h, "a.png").reason
    assert len(scan(make_dataset(tmp_path, max_image_pixels=0)).items) == 2  # 0 = no limit of ours
    with pytest.raises(ConfigError, match=r"max_image_pixels must be >= 0"):
        scan(make_dataset(tmp_path, max_image_pixels=-1))


def _odd(folder: Path, name: bytes) -> Path:
    """`folder`/`name` for a name that is not UTF-8 (Python holds its bytes as lone surrogates)."""
    return folder / os.fsdecode(name)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_file_and_folder_names_that_are_not_utf8_are_reported_not_fatal(tmp_path, write_image, make_dataset,
                                                                        policy, capsys):
    """Fails before the fix: one such name crashed the whole scan with UnicodeEncodeError (the crop seed)."""
    try:
        write_image(_odd(tmp_path, b"caf\xe9.png"), caption="latin-1 name")
        write_image(_odd(tmp_path, b"dir\xff") / "inner.png", caption="inside an odd folder")
    except (UnicodeEncodeError, OSError) as e:  # a file system that only takes UTF-8 names (not Linux ext4/tmpfs)
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    _odd(tmp_path, b"notes\xe9.txt").write_text("not an image: only counted")
    write_image(tmp_path / "ok.png")
    h = scan(make_dataset(tmp_path, bad_image=policy))
    assert [Path(p).name for p in h.report.used] == ["ok.png"]
    file_skip, dir_skip = only_skip(h, "caf\\xe9.png"), only_skip(h, "dir\\xff")
    assert "file name is not valid UTF-8 (b'caf\\xe9.png')" in file_skip.reason and "Rename it" in file_skip.reason
    assert "folder name is not valid UTF-8 (b'dir\\xff')" in dir_skip.reason
    assert file_skip.kind == "bad_image" and file_skip.is_error == (policy == "error")
    json.dumps(h.report.as_dict(), ensure_ascii=False).encode("utf-8")  # every reported path is printable text
    h.report.as_text().encode("utf-8")
    if policy == "error":
        with pytest.raises(DatasetError, match=r"caf\\xe9\.png: file name is not valid UTF-8"):
            h.require_usable()
    else:
        h.require_usable()


# ---------------------------------------------------------------- captions


def test_missing_caption_policies(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png")
    write_image(tmp_path / "nocap.png", caption=None)
    err = scan(make_dataset(tmp_path))  # default 'error'
    s = only_skip(err, "nocap.png")
    assert s.kind == "missing_caption" and s.is_error and "'nocap.txt' not found" in s.reason
    with pytest.raises(DatasetError, match="nocap.png: no caption file"):
        err.require_usable()
    skip = scan(make_dataset(tmp_path, missing_caption="skip"))
    assert not only_skip(skip, "nocap.png").is_error
    skip.require_usable()
    empty = scan(make_dataset(tmp_path, missing_caption="empty"))
    assert {Path(i.path).name: i.caption for i in empty.items} == {"nocap.png": "", "ok.png": "a photo"}


def test_empty_caption(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png")
    write_image(tmp_path / "blank.png", caption="  \n\t ")
    s = only_skip(scan(make_dataset(tmp_path)), "blank.png")
    assert s.kind == "empty_caption" and s.is_error and "'blank.txt'" in s.reason
    used = scan(make_dataset(tmp_path, empty_caption="empty"))
    assert sorted(i.caption for i in used.items) == ["", "a photo"]


def test_non_utf8_caption(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png")
    write_image(tmp_path / "latin.png", caption=None)
    (tmp_path / "latin.txt").write_bytes("café au lait".encode("latin-1"))
    h = scan(make_dataset(tmp_path))
    s = only_skip(h, "latin.png")
    assert s.kind == "invalid_caption" and s.is_error and "not UTF-8 (byte 0xe9 at offset 3)" in s.reason
    with pytest.raises(DatasetError, match="Re-save it as UTF-8"):
        h.require_usable()
    assert not only_skip(scan(make_dataset(tmp_path, invalid_caption="skip")), "latin.png").is_error


def test_two_images_with_the_same_stem(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "cat.png", seed=1, caption="a cat")
    write_image(tmp_path / "cat.jpg", seed=2, caption="a cat")
    write_image(tmp_path / "dog.png", caption="a dog")
    h = scan(make_dataset(tmp_path))
    for name in ("cat.png", "cat.jpg"):
        s = only_skip(h, name)
        assert s.kind == "duplicate_stem" and s.is_error and "'cat.txt'" in s.reason and "cat.jpg, cat.png" in s.reason
    kept = scan(make_dataset(tmp_path, duplicate_stem="keep"))
    assert len(kept.items) == 3
    # with file-name captions the stems do not share a caption file: no problem
    assert len(scan(make_dataset(tmp_path, caption_strategy="filename")).items) == 3


# ---------------------------------------------------------------- folders


def test_symlink_loops(tmp_path, write_image, make_dataset):
    root = tmp_path / "ds"
    write_image(root / "sub" / "ok.png")
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)  # folder loop
    (root / "a.png").symlink_to(root / "b.png")  # file loop a -> b -> a
    (root / "b.png").symlink_to(root / "a.png")
    h = scan(make_dataset(root))
    assert [Path(p).name for p in h.report.used] == ["ok.png"]
    loops = {Path(s.path).name: s for s in h.report.skipped if s.kind == "symlink_loop"}
    assert set(loops) == {"back", "a.png", "b.png"}
    assert "already scanned" in loops["back"].reason and "back to itself" in loops["a.png"].reason


def test_broken_symlink(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "ok.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    s = only_skip(scan(make_dataset(tmp_path)), "gone.png")
    assert "broken symlink" in s.reason


def test_dataset_folder_does_not_exist(tmp_path, make_dataset):
    h = scan(make_dataset(tmp_path / "nope"))
    assert h.items == () and "does not exist" in h.report.problems[0]
    with pytest.raises(DatasetError, match=r"nope: dataset folder does not exist \(data\.datasets\[0\]\.path"):
        h.require_usable()


def test_folder_with_no_images(tmp_path, make_dataset):
    (tmp_path / "readme.txt").write_text("hello")
    h = scan(make_dataset(tmp_path))
    assert "no PNG, JPEG, WebP or BMP image" in h.report.problems[0] and "1 other files" in h.report.problems[0]
    with pytest.raises(DatasetError, match="no PNG, JPEG"):
        h.require_usable()


def test_all_images_filtered_is_an_error(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "small.png", (8, 8))
    with pytest.raises(DatasetError, match="no usable image"):
        scan(make_dataset(tmp_path)).require_usable()


def test_invalid_config_raises_with_field_path(tmp_path, make_dataset):
    with pytest.raises(ConfigError, match=r"data\.datasets\[0\]\.background"):
        scan(make_dataset(tmp_path, background="not-a-colour"))


# ---------------------------------------------------------------- the whole zoo through the CLI


def _bad_zoo(root: Path, write_image) -> dict[str, str]:
    """Good images plus one of every bad input; returns bad file name -> expected reason fragment."""
    write_image(root / "good1.png", (64, 48), caption="good one", seed=1)
    write_image(root / "good2.jpg", (48, 64), caption="good two", seed=2)
    write_image(root / "sub" / "good3.webp", (64, 64), caption="good three", seed=3)
    (root / "zero.png").write_bytes(b"")
    jpeg = write_image(root / "src" / "full.jpg", (64, 64), caption="full", seed=4).read_bytes()
    (root / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "fake.png").write_text("not an image")
    write_image(root / "small.png", (10, 10), caption="small")
    write_image(root / "banner.png", (400, 20), caption="banner")
    write_image(root / "nocap.png", caption=None)
    write_image(root / "blank.png", caption="   ")
    write_image(root / "latin.png", caption=None)
    (root / "latin.txt").write_bytes(b"caf\xe9")
    write_image(root / "twin.png", caption="twin", seed=5)
    write_image(root / "twin.jpg", caption="twin", seed=6)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "locked.png").write_bytes((root / "good1.png").read_bytes())
    (root / "locked.txt").write_text("locked")
    (root / "locked.png").chmod(0)
    expected = {"zero.png": "empty file", "trunc.jpg": "truncated", "fake.png": "not an image",
                "small.png": "too small", "banner.png": "aspect ratio", "nocap.png": "no caption file",
                "blank.png": "is empty", "latin.png": "not UTF-8", "twin.png": "share the caption file",
                "twin.jpg": "share the caption file", "loop": "symlink loop"}
    if not os.access(root / "locked.png", os.R_OK):
        expected["locked.png"] = "cannot be read"
    return expected


def test_scan_reports_every_bad_file_and_buckets_the_good(tmp_path, write_image, snapshot, monkeypatch, capsys):
    root = tmp_path / "zoo"
    expected = _bad_zoo(root, write_image)
    before = snapshot(root)
    monkeypatch.setattr(cli, "COMMANDS", {"scan": cli.COMMANDS["scan"]})  # only the command under test
    rc = cli.main(["scan", str(root), "--resolution", "64", "--min-size", "16", "--json"])
    report = json.loads(capsys.readouterr().out)
    (root / "locked.png").chmod(0o644)
    assert rc == 0
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    for name, fragment in expected.items():
        assert fragment in skipped[name], (name, skipped.get(name))
    used = sorted(Path(p).name for p in report["used"])
    assert set(used) >= {"good1.png", "good2.jpg", "good3.webp"}  # (+ locked.png when running as root)
    assert set(used).isdisjoint(expected)
    assert sum(report["buckets"].values()) == len(used)
    assert all(int(side) % 16 == 0 for name in report["buckets"] for side in name.split("x"))
    assert any("nocap.png" in e for e in report["errors"])  # policy 'error' problems are flagged
    (root / "locked.png").chmod(0)
    assert snapshot(root) == before  # nothing modified or deleted
    (root / "locked.png").chmod(0o644)


def test_scan_text_report_and_exit_code_when_nothing_usable(tmp_path, write_image, capsys):
    write_image(tmp_path / "nocap.png", caption=None)
    parser = argparse.ArgumentParser()
    scan_command.add_arguments(parser)
    rc = scan_command.run(parser.parse_args([str(tmp_path), "--min-size", "16"]))
    out = capsys.readouterr().out
    assert rc == 2
    assert "1 images found, 0 used, 1 skipped" in out and "nocap.png: no caption file" in out
    rc = scan_command.run(parser.parse_args([str(tmp_path / "missing"), "--json"]))
    assert rc == 2 and "does not exist" in json.loads(capsys.readouterr().out)["problems"][0]


def test_scan_loads_no_model(tmp_path, write_image):
    """The scan command never imports transformers or diffusers (so it cannot load a model)."""
    write_image(tmp_path / "a.png")
    code = ("import sys, argparse; from lumina2_train.data import scan_command as s; p = argparse.ArgumentParser(); "
            "s.add_arguments(p); rc = s.run(p.parse_args([sys.argv[1], '--min-size', '16', '--json'])); "
            "bad = [m for m in ('transformers', 'diffusers') if m in sys.modules]; "
            "sys.exit(10 if bad else rc)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["used"] == [str(tmp_path / "a.png")]
