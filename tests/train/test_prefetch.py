"""Micro-batches prepared ahead on a worker thread are the ones the inline path prepares, draw for draw."""

import threading

import pytest
import torch

from lumina2_train import recipe
from lumina2_train.train import prefetch, train_lora
from lumina2_train.train.batches import BucketBatches, DataPosition
from lumina2_train.train.distributed import current_world
from lumina2_train.train.prefetch import MicroBatches, batch_preparer


def _feed(cache, depth, grad_accum=2, first_step=3):
    batches = BucketBatches(cache.buckets(), {}, 2, seed=5)
    prepare = batch_preparer(cache, recipe.TimestepSampling(), 5, 0.5, current_world(), pin=False)
    return MicroBatches(batches.iterate(DataPosition(1, 0)), prepare, first_step, grad_accum, depth)


def test_prefetched_micro_batches_equal_inline_ones(tensor_cache):
    with _feed(tensor_cache, 0) as inline, _feed(tensor_cache, 2) as ahead:
        for _ in range(7):
            a, b = inline.next(), ahead.next()
            assert a.position == b.position and a.bucket == b.bucket
            for x, y in ((a.batch.latents, b.batch.latents), (a.batch.cap_feats, b.batch.cap_feats),
                         (a.sigma, b.sigma), (a.noise, b.noise)):
                assert torch.equal(x, y)
            # the generator is handed over where the draws left it (rollout draws from it next)
            assert torch.equal(torch.rand(3, generator=a.gen), torch.rand(3, generator=b.gen))


def test_training_with_prefetch_equals_training_inline(run_config, tiny_backbone, tensor_cache, tmp_path,
                                                       monkeypatch):
    cfg = run_config(tmp_path, steps=3, grad_accum=2)  # caption dropout and adapter dropout on
    inline = train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "inline")
    monkeypatch.setattr(prefetch, "prefetch_depth", lambda device, cache: 2)
    ahead = train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "ahead")
    assert ahead.losses == inline.losses and ahead.sigmas == inline.sigmas
    for name, mod in inline.adapters.items():
        assert torch.equal(ahead.adapters[name].up, mod.up)


def test_an_error_while_preparing_reaches_the_training_thread():
    def prepare(step, micro, item):
        if step == 1:
            raise ValueError(f"entry {item} is unreadable")
        return step

    with MicroBatches(iter(range(10)), prepare, 0, 1, depth=2) as feed:
        assert feed.next() == 0
        with pytest.raises(ValueError, match="entry 1 is unreadable"):
            feed.next()


def test_close_stops_a_worker_blocked_on_a_full_queue():
    with MicroBatches(iter(range(1000)), lambda step, micro, item: item, 0, 1, depth=1) as feed:
        assert feed.next() == 0
        worker = feed._thread
    assert not worker.is_alive() and not any(t.name == "lumina2t-prefetch" for t in threading.enumerate())


def test_cuda_only_and_never_for_on_the_fly_caches():
    class OnTheFly:
        on_the_fly = True

    assert prefetch.prefetch_depth(torch.device("cpu"), object()) == 0
    assert prefetch.prefetch_depth(torch.device("cuda"), object()) == 2
    assert prefetch.prefetch_depth(torch.device("cuda"), OnTheFly()) == 0
