"""Full fine-tune as an adapter: identity at creation, trains copies, never writes the base tree."""

import pytest
import torch

from lumina2_train.adapters import FullWeight, build_adapters, select_targets
from lumina2_train.backbones.nextdit import linear_names
from lumina2_train.config import AdapterConfig, RunConfig, SaveConfig, TrainConfig
from lumina2_train.train import train_lora


def test_full_adapter_is_the_identity_and_covers_every_linear(tiny_backbone):
    cfg = AdapterConfig(kind="full", targets=())
    assert select_targets(tiny_backbone.arch, cfg) == linear_names(tiny_backbone.arch)
    adapters = build_adapters(tiny_backbone, cfg)
    assert all(isinstance(m, FullWeight) for _, m in adapters.items())
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(tiny_backbone.velocity(x, s, f, None, adapters.as_dict()),
                                   tiny_backbone.velocity(x, s, f, None), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_full_fine_tune_trains_copies_in_backward(tiny_backbone, tensor_cache, tmp_path):
    base = {k: v.clone() for k, v in tiny_backbone.tree.state_dict().items()}
    cfg = RunConfig(adapter=AdapterConfig(kind="full", targets=("attention", "ffn")),
                    train=TrainConfig(steps=3, batch_size=2, lr=1e-4, precision="fp32", checkpointing="auto",
                                      max_grad_norm=0.0, optimizer_states="8bit", optimizer_in_backward=True),
                    save=SaveConfig(output_dir=str(tmp_path))).validate(need_data=False)
    from lumina2_train.train.loop import Trainer

    trainer = Trainer(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "r")
    before = {n: m.weight.detach().clone() for n, m in trainer.setup.adapters.items()}
    with trainer.micro_batches(trainer.state.position) as feed:
        losses = [trainer._optimizer_step(feed)[0] for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.grad is None for p in trainer.setup.adapters.parameters())
    assert all(not torch.equal(m.weight, before[n]) for n, m in trainer.setup.adapters.items())
    assert all(torch.equal(v, base[k]) for k, v in tiny_backbone.tree.state_dict().items())
    assert train_lora  # the same Trainer the Train node runs
