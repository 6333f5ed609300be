"""run.py, the one orchestrator (prepare -> train -> publish) of the CLI and the Train node, and the adapter kinds'
output policies (adapters/kinds.py) that replace every branch on a kind's name outside adapters/."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from lumina2_train import run
from lumina2_train.adapters import REGISTRY
from lumina2_train.adapters.kinds import KINDS, kind_of, network_metadata
from lumina2_train.config import ADAPTER_KINDS, AdapterConfig, DataConfig, DatasetConfig, SaveConfig
from lumina2_train.errors import ConfigError
from lumina2_train.train.distributed import World

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _cfg(run_config, tmp_path, **train):
    cfg = run_config(tmp_path / "out", **train)
    return dataclasses.replace(cfg, data=DataConfig(datasets=(DatasetConfig(path=str(tmp_path)),)),
                               save=dataclasses.replace(cfg.save, name="mine"))


def test_prepare_checks_and_gives_each_run_a_folder_of_its_own(run_config, tmp_path):
    cfg = _cfg(run_config, tmp_path)
    first = run.prepare(cfg, World(), device=CPU)
    second = run.prepare(cfg, World(), device=CPU, output=tmp_path / "x.safetensors")
    assert (first.run_dir, second.run_dir) == (tmp_path / "out" / "mine", tmp_path / "out" / "mine_2")
    assert first.run_dir.is_dir() and second.run_dir.is_dir()
    assert first.output is None and second.output == tmp_path / "x.safetensors" and first.device == CPU
    given = run.prepare(cfg, World(), device=CPU, run_dir=tmp_path / "here")
    assert given.run_dir == tmp_path / "here" and given.cfg is cfg


def test_prepare_refuses_before_any_folder_is_made(run_config, tmp_path):
    cfg = _cfg(run_config, tmp_path, optimizer_in_backward=True, max_grad_norm=0.0)
    with pytest.raises(ConfigError, match="train.optimizer_in_backward"):
        run.prepare(cfg, World(0, 2), device=CPU)
    with pytest.raises(ConfigError, match=r"train.lr must be a finite number"):
        run.prepare(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=float("nan"))), World(),
                    device=CPU)
    bad_name = dataclasses.replace(cfg, save=SaveConfig(output_dir=cfg.save.output_dir, name="../elsewhere"))
    with pytest.raises(ConfigError, match="save.name"):
        run.prepare(bad_name, World(), device=CPU)
    assert not (tmp_path / "out").exists() and not (tmp_path / "elsewhere").exists()


def test_every_config_kind_has_a_factory_and_an_output_policy():
    assert set(ADAPTER_KINDS) == set(REGISTRY) and set(ADAPTER_KINDS) <= set(KINDS)
    assert kind_of(AdapterConfig(use_dora=True)).name == "dora" and kind_of(AdapterConfig()).name == "lora"
    full = kind_of(AdapterConfig(kind="full", targets=()))
    assert full.writes_model and full.shards and full.save_formats is None and full.comfy_folder == "diffusion_models"
    assert [k.name for k in KINDS.values() if k.save_formats and "kohya" in k.save_formats] == ["lora"]
    assert network_metadata(AdapterConfig()) == {}
    assert '"algo": "lokr"' in network_metadata(AdapterConfig(kind="lokr"))["ss_network_args"]


def test_no_branch_on_a_kind_name_outside_adapters():
    """Each kind's difference is a field of its AdapterKind; code elsewhere reads the field."""
    pattern = re.compile(r"""\.kind\s*[!=]=\s*["'](full|lora|loha|lokr)["']|\.kind\s+(not\s+)?in\s*\(|"""
                         r"""__name__\s*[!=]=\s*["'](LoRA|DoRA|LoHa|LoKr|FullWeight)["']""")
    found = []
    for path in [*(REPO / "lumina2_train").rglob("*.py"), *(REPO / "nodes").rglob("*.py")]:
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("lumina2_train/adapters/", "lumina2_train/bench/", "lumina2_train/simpletuner/")):
            continue  # adapters/ owns the kinds; bench and the SimpleTuner import name configs they build
        found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                  if pattern.search(line)]
    assert not found, "\n".join(found)
