"""The Trainer's set-up: built once in __init__, the forward options returned (not written in place), the
one-process strategy, and dynamo's recompile limit scoped to the compiled step."""

import dataclasses

import torch

from lumina2_train.cache import CacheSource
from lumina2_train.train.loop import Trainer
from lumina2_train.train.parallel import Strategy
from lumina2_train.train.speed import compiled_region, forward_options


def test_compiled_region_raises_the_recompile_limit_only_inside():
    import torch._dynamo

    before = torch._dynamo.config.recompile_limit
    with compiled_region(before + 17):
        assert torch._dynamo.config.recompile_limit == before + 17
    assert torch._dynamo.config.recompile_limit == before
    with compiled_region(0):  # nothing compiled: no change
        assert torch._dynamo.config.recompile_limit == before


def test_forward_options_are_returned_not_written(run_config, tiny_backbone, tmp_path):
    cfg = run_config(tmp_path, checkpointing="on")
    current = tiny_backbone.options
    snapshot = dataclasses.replace(current)
    opts = forward_options(tiny_backbone, cfg)
    assert opts is not current and current == snapshot
    assert opts.checkpoint and opts.recompute_rng and opts.units == {} and opts.keep_activations == {}
    assert opts.cudnn_attention == current.cudnn_attention


def test_the_set_up_is_built_once_in_init(run_config, tiny_backbone, tensor_cache, tmp_path):
    assert isinstance(tensor_cache, CacheSource)
    state = torch.random.get_rng_state()
    trainer = Trainer(run_config(tmp_path), tiny_backbone, tensor_cache, run_dir=tmp_path / "r")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    su = trainer.setup
    assert type(su.strategy) is Strategy and su.strategy.name == "single" and su.strategy.forward is None
    assert su.release is None and not su.sharded_checkpoints and su.recompile_limit == 0
    assert tiny_backbone.options.recompute_rng  # set once, from the set-up
    names = set(vars(trainer))
    trainer.run()
    assert set(vars(trainer)) == names and trainer.setup is su  # nothing assigned after __init__
