import pytest
import torch

from lumina2_train.config import AdapterConfig, RunConfig, SaveConfig, TrainConfig, ValidationConfig
from lumina2_train.train import TensorCache, TensorSample


@pytest.fixture
def tensor_cache():
    gen = torch.Generator().manual_seed(7)
    lat = [torch.randn(16, 4, 4, generator=gen) for _ in range(3)] + [torch.randn(16, 4, 6, generator=gen)]
    feats = [torch.randn(n, 32, generator=gen) for n in (5, 3, 5, 4)]
    samples = [TensorSample(latent=x, cap_feats=f, caption=f"c{i}") for i, (x, f) in enumerate(zip(lat, feats))]
    return TensorCache(samples, prompts={"a red cube": torch.randn(6, 32, generator=gen),
                                         "": torch.randn(1, 32, generator=gen)},
                       empty=torch.randn(1, 32, generator=gen))


@pytest.fixture
def run_config():
    return _run_config


def _run_config(tmp_path, resume_from: str = "", **train) -> RunConfig:
    t = dict(steps=4, batch_size=2, lr=1e-3, precision="fp32", checkpointing="off", caption_dropout=0.2, seed=5)
    t.update(train)
    return RunConfig(adapter=AdapterConfig(rank=4, alpha=4.0, targets=("attention", "ffn"), dropout=0.1),
                     train=TrainConfig(**t), validation=ValidationConfig(), save=SaveConfig(output_dir=str(tmp_path)),
                     resume_from=resume_from)
