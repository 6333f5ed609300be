"""Every output path that cannot be used gives a PathError naming the setting, the folder and the fix, before any
model loads: a file in the folder's place, a file as one of its parents, a parent that cannot be created (under
/proc), no permission (under /sys: refused even to root, so this holds when the tests run as root). For
save.output_dir, cache.dir, tracking.log_dir, the resumed run's folder, `train --check`, `convert` OUTPUT,
`demo --output`, `bench --json` / `--profile` and `make-tiny-models DIR`; the ComfyUI nodes' lora_name / name
and ComfyUI's output folder are in tests/comfy/test_train_node.py.

Fails before the fix: each of these was a raw FileExistsError / NotADirectoryError / PermissionError traceback,
raised after the encoders had loaded (or, for bench, after the CUDA check)."""

from __future__ import annotations

import errno
import importlib
import json
import shutil
from pathlib import Path

import pytest

from lumina2_train.storage.paths import PathError

from .test_bad_run_input import nothing_cached, run_config, tiny_run  # noqa: F401  (the fixture)

KINDS = ("a file in its place", "a file as its parent", "a parent that cannot be created", "no permission")
FIXES = ("Move that file away", "Choose a folder", "Fix its permissions", "Choose another")


def unusable(kind: str, tmp_path: Path, name: str = "out") -> Path:
    """A folder path that cannot be used, of the given kind (nothing is created outside tmp_path)."""
    if kind == "a file in its place":
        (tmp_path / name).write_text("not a folder")
        return tmp_path / name
    if kind == "a file as its parent":
        (tmp_path / f"{name}_file").write_text("not a folder")
        return tmp_path / f"{name}_file" / "sub" / name
    if kind == "a parent that cannot be created":
        return Path("/proc/lumina2t-test-cannot-exist") / name
    if Path("/sys").is_dir():
        return Path("/sys/lumina2t-test-cannot-exist") / name
    pytest.skip("no /sys here")


def assert_clear(e: pytest.ExceptionInfo, what: str, path: Path) -> None:
    msg = str(e.value)
    assert isinstance(e.value, PathError), msg
    assert f"- {what}: " in msg or msg.startswith(f"{what}: "), msg
    assert str(path) in msg or str(path.parent) in msg, msg
    assert any(f in msg for f in FIXES), msg
    assert "Traceback" not in msg


@pytest.mark.parametrize("kind", KINDS)
def test_writable_folder_names_the_setting_for_every_kind(tmp_path, kind):
    from lumina2_train.storage.paths import writable_folder

    path = unusable(kind, tmp_path)
    for create in (True, False):
        with pytest.raises(PathError) as e:
            writable_folder(path, what="save.output_dir", create=create)
        assert_clear(e, "save.output_dir", path)
    assert writable_folder(tmp_path / "fine" / "new", what="x") == tmp_path / "fine" / "new"
    assert sorted(p.name for p in (tmp_path / "fine" / "new").iterdir()) == []  # the probe is removed
    assert not writable_folder(tmp_path / "later", what="x", create=False).exists()  # --check creates nothing


def test_every_os_error_becomes_a_message_naming_the_setting(tmp_path):
    """The errno classes a real disk gives (read-only file systems cannot be mounted by an unprivileged test)."""
    from lumina2_train.storage.paths import unusable_folder, writable_file

    for code, words in ((errno.EROFS, "read-only file system"), (errno.EACCES, "no permission"),
                        (errno.EPERM, "no permission"), (errno.ENOSPC, "cannot be created or written"),
                        (errno.ENAMETOOLONG, "cannot be created or written")):
        err = unusable_folder(tmp_path / "x", "cache.dir", OSError(code, "boom"))
        assert err.problems[0].startswith("cache.dir: ") and words in str(err) and str(tmp_path) in str(err), str(err)
    with pytest.raises(PathError, match=r"bench --json: .* is a folder where the file goes"):
        writable_file(tmp_path, what="bench --json")


# ---------------------------------------------------------------- a whole run: before any model loads


def damaged_vae(tmp_path: Path) -> Path:
    """A VAE file that fails as soon as the encoders are set up: reaching it means the check came too late."""
    path = tmp_path / "damaged_vae.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return path


@pytest.mark.parametrize("setting", ["save__output_dir", "cache__dir", "tracking__log_dir"])
@pytest.mark.parametrize("kind", KINDS)
def test_run_refuses_an_unusable_output_folder_before_any_model_loads(tiny_run, tmp_path, setting, kind):  # noqa: F811
    from lumina2_train.pipeline import run_training

    path = unusable(kind, tmp_path)
    cfg = run_config(tiny_run, tmp_path, model__vae=str(damaged_vae(tmp_path)), **{setting: str(path)})
    with pytest.raises(PathError) as e:
        run_training(cfg)
    assert_clear(e, setting.replace("__", "."), path)
    assert nothing_cached(tmp_path)


def fake_run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "old"
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    (run / "checkpoints" / "step_00000001" / "state.json").write_text("{}")
    return run


@pytest.mark.parametrize("sub", ["loras", "samples", "logs"])
def test_resume_refuses_a_run_folder_it_cannot_write_before_any_model_loads(tiny_run, tmp_path, sub):  # noqa: F811
    from lumina2_train.config import RunConfig
    from lumina2_train.pipeline import run_training
    from lumina2_train.tiny import write_tiny_diffusers  # noqa: F401

    from .test_bad_run_input import run_dict

    run = fake_run_folder(tmp_path)
    (run / sub).write_text("a file where the run writes its folder")
    d = run_dict(tiny_run, tmp_path) | {"resume_from": str(run)}
    d["model"]["vae"] = str(damaged_vae(tmp_path))
    with pytest.raises(PathError) as e:
        run_training(RunConfig.from_dict(d))
    assert_clear(e, f"resume_from (the resumed run writes in {run})", run / sub)
    assert f"{run / sub} is a file, not a folder" in str(e.value)


def cli(argv: list[str]):
    """Run one CLI command in-process and let its exception through (main() would log it and return 2)."""
    from lumina2_train.cli.main import build_parser

    args = build_parser().parse_args(argv)
    return importlib.import_module(args._module).run(args)


@pytest.mark.parametrize("kind", KINDS)
def test_train_check_refuses_an_unusable_output_folder_and_creates_nothing(tiny_run, tmp_path, kind):  # noqa: F811
    from .test_bad_run_input import run_dict

    path = unusable(kind, tmp_path)
    d = run_dict(tiny_run, tmp_path)
    d["save"]["output_dir"] = str(path)
    (tmp_path / "run.json").write_text(json.dumps(d))
    with pytest.raises(PathError) as e:
        cli(["train", str(tmp_path / "run.json"), "--check"])
    assert_clear(e, "save.output_dir", path)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_convert_refuses_an_unusable_output_before_reading_the_input(tmp_path, kind):
    folder = unusable(kind, tmp_path)
    out = folder / "out.safetensors"
    bad_input = damaged_vae(tmp_path)  # reading it would fail with the input's own error
    with pytest.raises(PathError) as e:
        cli(["convert", str(bad_input), str(out)])
    assert_clear(e, "convert OUTPUT", folder)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(PathError, match=r"convert OUTPUT: .*dir.safetensors is a folder where the file goes"):
        cli(["convert", str(bad_input), str(tmp_path / "dir.safetensors"), "--force"])


@pytest.mark.parametrize("kind", KINDS)
def test_demo_bench_and_tiny_models_refuse_unusable_outputs_first(tmp_path, kind):
    path = unusable(kind, tmp_path)
    with pytest.raises(PathError) as e:
        cli(["demo", "--output", str(path)])
    assert_clear(e, "demo --output", path)
    with pytest.raises(PathError) as e:
        cli(["make-tiny-models", str(path)])
    assert_clear(e, "make-tiny-models DIR", path)
    with pytest.raises(PathError) as e:  # before the CUDA check (this machine has no GPU) and any measuring
        cli(["bench", "--json", str(path / "report.json")])
    assert_clear(e, "bench --json", path)
    with pytest.raises(PathError) as e:
        cli(["bench", "--profile", str(path)])
    assert_clear(e, "bench --profile", path)
    shutil.rmtree(tmp_path / "sub", ignore_errors=True)


def test_a_write_that_fails_later_names_the_file_and_keeps_oserror(tmp_path):
    """The backstop under the early checks: a folder that became unusable during a run (atomic writes, checkpoint
    folders) is a WriteError (still an OSError) naming the file and the fix, not a raw traceback."""
    from lumina2_train.storage.atomic import WriteError, atomic_write_text
    from lumina2_train.train.checkpoint import checkpoint_temp

    (tmp_path / "samples").write_text("a file where the folder goes")
    with pytest.raises(WriteError, match=r"samples/a.txt: cannot be written .*Make sure .*samples is a folder"):
        atomic_write_text(tmp_path / "samples" / "a.txt", "x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("a file where the folder goes")
    with pytest.raises(OSError, match=r"step_00000003: cannot be written") as e:
        checkpoint_temp(run, 3)
    assert isinstance(e.value, WriteError)
