"""bench --peers wiring on the CPU: the step clock, the peers' table and targets, the arguments, and kohya's
Lumina step on a tiny model when a sd-scripts checkout is given (KOHYA_SD_SCRIPTS)."""

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from lumina2_train.bench import command, models
from lumina2_train.bench.cases import Group
from lumina2_train.bench.peers.clock import step_clock
from lumina2_train.bench.peers.table import ours_over, peer_lines, peer_target_rows


def test_clock_marks_every_optimizer_step_and_times_after_the_warmup():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    with step_clock(torch.device("cpu"), warmup=2) as clock:
        for _ in range(5):
            p.sum().backward()
            opt.step()
            opt.zero_grad()
    opt.step()  # outside the block: not marked
    t = clock.timing(1.0)
    assert len(clock.marks) == 5 and len(t.steps_s) == 3 and len(t.warmup_s) == 2
    assert t.step_s > 0 and clock.setup_s > 0


def test_clock_refuses_too_few_steps():
    with step_clock(torch.device("cpu"), warmup=3) as clock:
        pass
    with pytest.raises(ValueError, match="needs at least 4"):
        clock.timing()


def _group():
    v = [{"label": "fast big", "samples_per_s": 8.0, "peak_gib": 40.0, "variant": {}},
         {"label": "capped", "samples_per_s": 6.0, "peak_gib": 15.0, "variant": {}}]
    peers = [{"peer": "kohya", "label": "attn", "samples_per_s": 3.0, "peak_gib": 20.0, "warmup_s": [5.0],
              "version": "abc", "target_ratio": 1.5, "target_at_memory": True},
             {"peer": "comfy", "label": "defaults", "samples_per_s": 1.0, "peak_gib": 25.0, "warmup_s": [9.0],
              "version": "0.3.64", "forward_batches": [16], "target_ratio": 8.0},
             {"peer": "comfy", "label": "fp8", "skipped": "no bypass_mode widget", "target_ratio": 8.0}]
    return {"group": {"name": "g"}, "variants": v, "peers": peers}


def test_ours_over_a_peer_uses_our_fastest_variant_within_its_memory_when_asked():
    g = _group()
    ratio, ours = ours_over(g, g["peers"][0])
    assert ours["label"] == "capped" and ratio == pytest.approx(2.0)  # 'fast big' needs 40 GiB > kohya's 20
    ratio, ours = ours_over(g, g["peers"][1])
    assert ours["label"] == "fast big" and ratio == pytest.approx(8.0)


def test_peer_table_and_targets():
    g = _group()
    text = "\n".join(peer_lines(g))
    assert "ComfyUI 0.3.64 TrainLoraNode" in text and "| 16 |" in text and "not run: no bypass_mode" in text
    rows = peer_target_rows([g])
    assert rows[0].endswith("| yes |") and "2.00×" in rows[0] and "≤ 20.0 GiB" in rows[0]
    assert rows[1].endswith("| yes |") and rows[2].endswith("| no |")


def _args(**kw):
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    ns = p.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_peer_arguments_are_checked(tmp_path):
    g = Group("g")
    assert command.peers_from_args(_args(), g) == ([], (1, 4))
    with pytest.raises(command.BenchError, match="no ComfyUI there.*no lumina_train_network.py.*two counts"):
        command.peers_from_args(_args(peers=True, peer_comfyui=[str(tmp_path)], kohya=str(tmp_path),
                                      peer_steps="x"), g)
    (tmp_path / "comfy_extras").mkdir()
    (tmp_path / "comfy_extras" / "nodes_train.py").write_text("")
    specs, steps = command.peers_from_args(_args(peers=True, peer_comfyui=[str(tmp_path)], peer_steps="2,3"), g)
    assert steps == (2, 3) and [s.peer for s in specs] == ["comfy"] * 3
    assert specs[0].setting.widgets == {"batch_size": 4}


def test_caption_lengths_are_checked():
    with pytest.raises(command.BenchError, match="caption-lengths"):
        command.groups_from_args(_args(caption_lengths="300,20"))


TINY = dict(models.FULL_DIT, hidden_size=64, num_layers=1, num_refiner_layers=1, num_attention_heads=2,
            num_kv_heads=1, multiple_of=16, axes_dim_rope=(8, 12, 12), axes_lens=(64, 32, 32), cap_feat_dim=32)


@pytest.mark.skipif(not os.environ.get("KOHYA_SD_SCRIPTS"), reason="set KOHYA_SD_SCRIPTS to a kohya-ss/sd-scripts "
                    "checkout (with its pinned transformers/diffusers importable) to run kohya's step")
def test_kohya_lumina_step_on_a_tiny_model(tmp_path):
    from lumina2_train.bench.peers.worker import run_peer, write_shared

    w = models.random_weights(TINY, torch.device("cpu"))
    inputs = models.make_inputs(Group("g", res=64, batch=2, caption_tokens=8), TINY, torch.device("cpu"))
    paths = write_shared(tmp_path, models.native_state(w), inputs)
    spec = dict(peer="kohya", root=os.environ["KOHYA_SD_SCRIPTS"], res=64, batch=2, caption_tokens=8, steps=2,
                warmup=1, rank=4, config=json.loads(json.dumps(TINY)), **paths,
                setting=dict(label="attn r4", network_dim=0, network_alpha=4, network_args=["attn_dim=4"]))
    row = run_peer(spec, torch.device("cpu"))
    assert "error" not in row, row.get("traceback")
    assert row["lora_modules"] == 6  # qkv and out of 1 layer + 1 noise refiner + 1 context refiner
    assert row["samples_per_s"] > 0 and len(row["steps_s"]) == 2 and Path(paths["weights"]).is_file()


def test_shared_weights_carry_norm_final_as_every_lumina2_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from lumina2_train.bench.peers.worker import write_shared

    native = models.native_state(models.random_weights(TINY, torch.device("cpu")))
    inputs = models.make_inputs(Group("g", res=64, batch=1, caption_tokens=8), TINY, torch.device("cpu"))
    paths = write_shared(tmp_path, native, inputs)
    saved = load_file(paths["weights"])
    assert torch.equal(saved["norm_final.weight"], torch.ones(TINY["hidden_size"], dtype=saved["norm_final.weight"].dtype))
    assert set(saved) == set(native) | {"norm_final.weight"}


def test_comfy_model_is_loaded_from_a_file_by_unetloaders_call(tmp_path):
    from types import SimpleNamespace

    from lumina2_train.comfyui.peer_trainlora import load_model

    calls = []

    def from_file(path, model_options):
        from safetensors.torch import load_file

        calls.append(sorted(load_file(path)))
        return "MODEL"

    sd = SimpleNamespace(load_diffusion_model=from_file, load_diffusion_model_state_dict=lambda *a, **k: "DIRECT")
    native = {"x_embedder.weight": torch.zeros(8, 4, dtype=torch.bfloat16)}
    assert load_model(SimpleNamespace(sd=sd), native, quantized=False, folder=tmp_path) == "MODEL"
    assert calls == [["norm_final.weight", "x_embedder.weight"]]
    assert load_model(SimpleNamespace(sd=sd), native, quantized=False) == "DIRECT"


@pytest.mark.skipif(not os.environ.get("SIMPLETUNER"), reason="set SIMPLETUNER to a bghira/SimpleTuner checkout "
                    "(the folder holding simpletuner/) to run its Lumina2 step")
def test_simpletuner_lumina2_step_on_a_tiny_model(tmp_path):
    from lumina2_train.bench.peers.worker import run_peer, write_shared

    w = models.random_weights(TINY, torch.device("cpu"))
    inputs = models.make_inputs(Group("g", res=64, batch=2, caption_tokens=8), TINY, torch.device("cpu"))
    paths = write_shared(tmp_path, models.native_state(w), inputs)
    spec = dict(peer="simpletuner", root=os.environ["SIMPLETUNER"], res=64, batch=2, caption_tokens=8, steps=2,
                warmup=1, rank=4, config=json.loads(json.dumps(TINY)), **paths, setting=dict(label="lora r4"))
    row = run_peer(spec, torch.device("cpu"))
    assert "error" not in row, row.get("traceback")
    assert {"to_q", "to_k", "to_v", "to_out.0"} <= set(row["lora_targets"])
    # rank 4 on q, k, v, out of 3 blocks (64 wide; k, v 32 out): rank x (in + out) per module
    assert row["trainable_params"] == 3 * 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))
    assert row["samples_per_s"] > 0 and len(row["steps_s"]) == 2 and row["loss"] == row["loss"]


def test_a_missing_simpletuner_checkout_is_named(tmp_path):
    with pytest.raises(command.BenchError, match=r"--simpletuner .*no simpletuner/helpers/models/lumina2"):
        command.peers_from_args(_args(peers=True, simpletuner=str(tmp_path)), Group("g"))
