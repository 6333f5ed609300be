"""Hostile workflow values (issue 9, item 6): names and folders stay inside the roots we may write."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from lumina2_train.storage import paths
from lumina2_train.storage.paths import PathError

HOSTILE = {
    "../evil": "uses '..'",
    "sub/../../evil": "uses '..'",
    "/etc/cron.d/x": "absolute path",
    "\\\\server\\share\\x": "absolute path",
    "C:\\Windows\\x": "absolute path",
    "C:x": "absolute path",
    "~/x": "absolute path",
    "a\x00b": "U+0000",
    "line\nbreak": "U+000A",
    "\u202egnp.exe": "U+202E",  # right-to-left override hides the real extension
    "zero\u200bwidth": "U+200B",
    "\uff0e\uff0e/evil": "U+FF0E",  # fullwidth dots: '..' after NFKC
    "a\uff0fb": "U+FF0F",  # fullwidth solidus
    "a\u2215b": "U+2215",  # division slash, '/' under Windows best-fit
    "\u2025": "U+2025",  # two-dot leader
    "a\udcffb": "U+DCFF",  # a lone surrogate (undecodable bytes)
    "CON": "reserved device name",
    "sub/nul.safetensors": "reserved device name",
    "com1 ": "ends with",
    "lpt¹": "reserved device name",
    "name.": "ends with '.'",
    ".hidden": "starts with '.'",
    ".x.l2t-1_1-abc.tmp": "starts with '.'",  # our own temporary names cannot be forged
    "a:b": "absolute path",
    "ab:stream": "':'",
    'a"b': "'\"'",
    "a|b": "'|'",
    "": "is empty",
    "   ": "is empty",
    "x" * 300: "longer than",
    "/".join(["x" * 200] * 2)[:239]: None,  # long but within limits
}


@pytest.mark.parametrize("value, expected", list(HOSTILE.items()), ids=range(len(HOSTILE)))
def test_hostile_names_are_refused_with_the_field_named(tmp_path, value, expected):
    if expected is None:
        assert paths.confine(tmp_path, value, what="save.name").is_relative_to(tmp_path.resolve())
        return
    with pytest.raises(PathError) as err:
        paths.confine(tmp_path, value, what="save.name")
    assert str(err.value).startswith("Invalid training setting:\n- save.name: ")
    assert expected in str(err.value)


@pytest.mark.parametrize("value, parts", [("my_lora", ("my_lora",)), ("sub/my lora", ("sub", "my lora")),
                                          ("a\\b", ("a", "b")), ("./x//y/", ("x", "y")), ("café/ü-1", ("café", "ü-1"))])
def test_ordinary_names_stay_below_the_root(tmp_path, value, parts):
    assert paths.confine(tmp_path, value, what="save.name") == tmp_path.resolve().joinpath(*parts)


def test_symlinks_out_of_the_root_are_not_followed(tmp_path):
    root, outside = tmp_path / "loras", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nowhere" / "file.safetensors")
    (root / "inner").mkdir()
    (root / "ok").symlink_to(root / "inner")
    for value in ("link/x", "link", "dangling"):
        with pytest.raises(PathError, match=r"subfolder: leads outside .*loras"):
            paths.confine(root, value, what="subfolder")
    assert paths.confine(root, "ok/x", what="subfolder") == (root / "inner" / "x").resolve()
    (root / "trap.safetensors").symlink_to(outside / "victim.txt")  # a LoRA name that is a link out
    with pytest.raises(PathError, match="save.name: leads outside"):
        paths.lora_file(root, "trap")
    with pytest.raises(PathError, match="subfolder: leads outside"):
        paths.lora_file(root, "x", subfolder="link")


def test_lora_file_names(tmp_path):
    loras = tmp_path / "models" / "loras"
    assert paths.lora_file(loras, "style") == loras.resolve() / "style.safetensors"
    assert paths.lora_file(loras, "style.safetensors", subfolder="lumina/v2") == \
        loras.resolve() / "lumina" / "v2" / "style.safetensors"
    for name, subfolder, field in (("../style", "", "save.name"), ("style", "../../..", "subfolder"),
                                   ("/tmp/style", "", "save.name"), ("CON", "", "save.name")):
        with pytest.raises(PathError, match=field):
            paths.lora_file(loras, name, subfolder=subfolder)


def test_resume_cache_and_dataset_folders(tmp_path):
    out = tmp_path / "output"
    (out / "run" / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert paths.resume_folder(out, "run/checkpoints/step_00000002") == (out / "run/checkpoints/step_00000002").resolve()
    assert paths.resume_folder(out, str(out / "run")) == (out / "run").resolve()  # pasted absolute path inside
    for value in (str(tmp_path / "elsewhere"), "../elsewhere", "/etc"):
        with pytest.raises(PathError, match="resume_from: leads outside|resume_from: uses"):
            paths.resume_folder(out, value)
    with pytest.raises(PathError, match="resume_from: is not a folder"):
        paths.resume_folder(out, "missing")
    assert paths.cache_folder(out, "") == out.resolve()
    assert paths.cache_folder(out, "lumina_cache") == out.resolve() / "lumina_cache"
    with pytest.raises(PathError, match="cache.dir: leads outside"):
        paths.cache_folder(out, str(tmp_path / "elsewhere"))
    # datasets are read where the user points, outside every root, but must be plain existing folders
    assert paths.readable_folder(str(tmp_path / "elsewhere"), what="dataset") == (tmp_path / "elsewhere").resolve()
    for value, problem in (("/no/such/folder", "not an existing folder"), ("a\x00b", r"U\+0000")):
        with pytest.raises(PathError, match=f"dataset: .*{problem}"):
            paths.readable_folder(value, what="dataset")


def test_run_folders_started_at_once_are_all_different(tmp_path):
    from lumina2_train.run import unique_run_dir

    made, barrier = [], threading.Barrier(12)

    def start():
        barrier.wait()
        made.append(unique_run_dir(tmp_path, "same_name"))

    threads = [threading.Thread(target=start) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 12 and all(p.is_dir() and p.parent == tmp_path.resolve() for p in made)
    with pytest.raises(PathError, match="save.name: uses '..'"):
        unique_run_dir(tmp_path, "../escape")


def test_prompt_and_caption_text_is_data(tmp_path, tiny_backbone):
    """Captions and prompt names go into cache keys, metadata and file names as text, never as code or paths."""
    from lumina2_train.recipe import format_prompt
    from lumina2_train.train.validation import save_images

    tricky = "{__import__('os').system('touch pwned')} %s %n ${HOME} $(id) `id` ../../etc/passwd \x00 {0}"
    assert format_prompt(tricky, "SYSTEM") == "SYSTEM <Prompt Start> " + tricky
    paths_, grid = save_images(torch.rand(4, 3, 8, 8), tmp_path / "samples", "step_000001",
                               ["../../escape", "/abs/x", "CON", tricky])
    assert all(p.parent == tmp_path / "samples" for p in [*paths_, grid])
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "escape.png").exists()
    assert sorted(os.listdir(tmp_path)) == ["samples"]
