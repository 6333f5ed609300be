"""The bench's Z-Image, caption-length and bucket groups on the CPU with tiny real models: the reference
(diffusers + PEFT) and our step run, agree on identical inputs, and the tables name what was measured."""

import pytest
import torch

from lumina2_train.bench import models
from lumina2_train.bench.cases import REF_BUDGET, Group, Variant, draw_lengths
from lumina2_train.bench.runner import run_bench
from lumina2_train.tiny import TINY_DIT, TINY_ZIMAGE

CPU = torch.device("cpu")


@pytest.mark.slow
def test_zimage_group_runs_ours_against_the_diffusers_reference():
    group = Group("tiny Z-Image", family="zimage", res=64, batch=2, rank=4, caption_tokens=40, steps=1, warmup=1,
                  variants=(Variant("eager, ckpt on", compile=False, ckpt="on"),
                            Variant("eager, auto", compile=False, memory_budget_gib=REF_BUDGET),
                            Variant("eager, ckpt on, training adapter r2", compile=False, ckpt="on",
                                    training_adapter_rank=2)))
    report, text = run_bench([group], device=CPU, config=dict(TINY_ZIMAGE), attention=False)
    g = report["groups"][0]
    assert g["group"]["family"] == "zimage"
    # our forward and diffusers' ZImageTransformer2DModel on the same weights and inputs (bf16 autocast)
    assert g["parity"]["loss_rel_diff"] < 1e-2 and g["parity"]["pred_rel_l2"] < 5e-2
    assert g["reference"]["samples_per_s"] > 0 and g["flops_per_sample"] > 0
    assert [v.get("error") for v in g["variants"]] == [None, None, None]
    assert all(v["samples_per_s"] > 0 and v["ratio"] > 0 for v in g["variants"])
    assert "### tiny Z-Image: Z-Image, 64² batch 2" in text


def test_zimage_weights_are_zimage_and_a_wrong_pairing_fails():
    weights = models.random_weights(dict(TINY_ZIMAGE), CPU)
    assert "cap_pad_token" in weights and "layers.0.attention.to_q.weight" in weights
    native = models.native_state(weights, dict(TINY_ZIMAGE))
    bb = models.diffusers_backbone(dict(TINY_ZIMAGE), native, CPU)
    assert bb.arch.family == "zimage" and bb.arch.rope_theta == 256.0 and bb.arch.pad_tokens_multiple == 32
    assert models.family_of(models.FULL_ZIMAGE) == "zimage" and models.family_of(models.FULL_DIT) == "lumina2"


def test_drawn_caption_lengths_make_a_padded_set_and_the_reference_cycles_it():
    lengths = draw_lengths(3, 9, 6)
    assert lengths == draw_lengths(3, 9, 6) and min(lengths) >= 3 and max(lengths) <= 9 and len(set(lengths)) > 1
    group = Group("g", res=64, batch=2, caption_tokens=9, caption_lengths=lengths, samples=6)
    inputs = models.make_inputs(group, dict(TINY_DIT), CPU)
    assert len(inputs.dataset) == 6 and [f.shape[0] for _, f in inputs.dataset] == list(lengths)
    batches = inputs.batches()
    assert len(batches) == 3
    for k, (lat, feats, mask) in enumerate(batches):
        want = lengths[2 * k : 2 * k + 2]
        assert lat.shape == (2, 16, 8, 8) and feats.shape[1] == max(want)
        assert (mask is None) == (want[0] == want[1])
        if mask is not None:
            assert mask.sum(1).tolist() == list(want)


@pytest.mark.slow
def test_padded_and_split_caption_lengths_and_buckets_run_through_the_trainer():
    lengths = draw_lengths(3, 9, 4)
    pad = Variant("padded", compile=False, ckpt="on")
    captions = Group("tiny captions", res=64, batch=2, rank=4, caption_tokens=9, caption_lengths=lengths,
                     samples=4, steps=2, warmup=2, variants=(pad, Variant("split", compile=False, ckpt="on",
                                                                          split_lengths=True)))
    buckets = Group("tiny buckets", batch=2, rank=4, caption_tokens=7, aspects=((256, 256), (256, 320)), samples=4,
                    steps=2, warmup=2, variants=(pad,))
    report, text = run_bench([captions, buckets], device=CPU, config=dict(TINY_DIT), attention=False)
    cap, buck = report["groups"]
    assert [v.get("error") for v in cap["variants"] + buck["variants"]] == [None, None, None]
    # the reference got its padding mask: our masked forward agrees with diffusers' on the first batch
    assert cap["parity"]["loss_rel_diff"] < 1e-2
    # both variants draw the same batches, σ and noise: split changes the kernel, not the loss
    pad_loss, split_loss = (v["loss"] for v in cap["variants"])
    assert abs(pad_loss - split_loss) / abs(pad_loss) < 1e-3
    assert len(buck["variants"][0]["steps_s"]) == 2 and buck["reference"]["samples_per_s"] > 0
    assert f"captions {min(lengths)}–{max(lengths)} tokens" in text
    assert "buckets 256×256 / 256×320" in text
