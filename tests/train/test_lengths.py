"""train.split_caption_lengths: a batch of mixed caption lengths, one unmasked forward per length, gives the
masked forward's predictions, loss and gradients; a training run with it matches one without."""

import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.config import AdapterConfig
from lumina2_train.train import Trainer
from lumina2_train.train.lengths import length_groups, velocity_by_length

from builders import velocity_inputs


def _batch(L=7, seed=0):
    x, sigma, feats = velocity_inputs(4, L, seed=seed, hw=(8, 12))
    mask = torch.ones(4, L, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    mask[3, 5:] = 0  # lengths 7, 5, 3, 5: three groups, rows 1 and 3 together
    return x, sigma, feats, mask


def test_length_groups_keep_first_appearance_order():
    *_, mask = _batch()
    assert length_groups(mask) == [(7, [0]), (5, [1, 3]), (3, [2])]


def test_split_forward_equals_the_masked_forward_with_gradients(tiny_backbone):
    x, sigma, feats, mask = _batch()
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=4.0, targets=("attention",)), "cpu", seed=0)
    for a in adapters.parameters():  # non-zero up-projections, so the adapters' gradients are not all zero
        torch.nn.init.normal_(a, std=0.05)
    target = torch.randn_like(x)

    def loss_and_grads(fn):
        loss = torch.nn.functional.mse_loss(fn(), target)
        grads = torch.autograd.grad(loss, list(adapters.parameters()))
        return loss.detach(), grads

    masked = loss_and_grads(lambda: tiny_backbone.velocity(x, sigma, feats, mask, adapters.as_dict()))
    split = loss_and_grads(lambda: velocity_by_length(tiny_backbone, x, sigma, feats, mask, adapters.as_dict()))
    torch.testing.assert_close(split[0], masked[0], atol=1e-6, rtol=1e-5)
    for a, b in zip(split[1], masked[1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in masked[1])


def test_a_run_with_split_lengths_matches_the_masked_run(run_config, tiny_backbone, tensor_cache, tmp_path,
                                                         monkeypatch):
    """tensor_cache has captions of 5, 3, 5 and 4 tokens: without grouping, batches of 4 mix lengths."""
    import lumina2_train.train.step as step

    split_calls = []

    def spy(*a, **k):
        split_calls.append(len(a[6]))
        return velocity_by_length(*a, **k)

    monkeypatch.setattr(step, "velocity_by_length", spy)
    tensor_cache.samples[3] = type(tensor_cache.samples[3])(latent=torch.randn(16, 4, 4),
                                                            cap_feats=tensor_cache.samples[3].cap_feats)
    losses = {}
    for split in (False, True):
        cfg = run_config(tmp_path / str(split), steps=3, batch_size=4, group_by_caption_length=False,
                         split_caption_lengths=split, caption_dropout=0.0)
        backbone = type(tiny_backbone)(tiny_backbone.tree, tiny_backbone.arch, kind="diffusers")
        result = Trainer(cfg, backbone, tensor_cache, run_dir=tmp_path / f"run{split}").run()
        losses[split] = result.losses
    assert split_calls and all(n == 3 for n in split_calls)  # every step: lengths 5, 3, 4 in one batch
    # the first step's loss is the same forward on the same weights; later steps carry float noise of the masked
    # forward (its batch is padded to CAPTION_PAD_MULTIPLE tokens) through AdamW's normalised updates
    torch.testing.assert_close(torch.tensor(losses[True][0]), torch.tensor(losses[False][0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), atol=1e-5, rtol=1e-3)


def test_mixed_lengths_pad_to_a_multiple_and_the_padding_changes_nothing(tiny_backbone):
    from lumina2_train.train.step import CAPTION_PAD_MULTIPLE, pad_captions

    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, 32, generator=gen) for n in (5, 3)]
    cap, mask = pad_captions(feats)
    assert cap.shape[1] == CAPTION_PAD_MULTIPLE and mask.sum(1).tolist() == [5, 3]
    same, none = pad_captions([feats[0], feats[0].clone()])
    assert same.shape[1] == 5 and none is None  # one length: no mask, no padding (the faster unmasked kernel)
    x, sigma = torch.randn(2, 16, 8, 8, generator=gen), torch.tensor([0.3, 0.7])
    tight = torch.zeros(2, 5, 32)
    tight[0], tight[1, :3] = feats[0], feats[1]
    with torch.no_grad():
        want = tiny_backbone.velocity(x, sigma, tight, torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]))
        got = tiny_backbone.velocity(x, sigma, cap, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
