"""Several processes on the CPU (gloo), started as torchrun starts them: 2 processes × batch 1 train exactly
like 1 process × batch 2 (DDP for a LoRA, FSDP2 for a full fine-tune), a 2-process checkpoint resumes in one
process on the same loss curve, and a cancel or a NaN on one rank stops every rank with a checkpoint."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lumina2_train.errors import CheckpointError
from lumina2_train.train.batches import BucketBatches, rank_slice
from lumina2_train.train.distributed import World, distributed_errors, effective_batch_size, lr_factor

_spec = importlib.util.spec_from_file_location("dist_worker", Path(__file__).with_name("dist_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One launch of 2 gloo processes running every scenario; {scenario: [rank 0 result, rank 1 result]}."""
    out = tmp_path_factory.mktemp("dist")
    scenarios = ["ddp", "fsdp", "stop", "nan"]
    worker.launch(out, scenarios)
    return out, {n: [torch.load(out / f"{n}.rank{r}.pt", weights_only=False) for r in (0, 1)] for n in scenarios}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run on one thread each: the same kernels, the same rounding
    yield
    torch.set_num_threads(threads)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_processes_batch_1_equal_one_process_batch_2_and_resume_in_one(two_processes, tmp_path, kind,
                                                                             one_thread):
    out, results = two_processes
    two = results[kind][0]
    adapter = "full" if kind == "fsdp" else "lora"
    one = worker._train(worker.run_config(tmp_path, kind=adapter, batch_size=2), tmp_path / "one")
    assert two["losses"] == pytest.approx(one.losses, rel=1e-5, abs=1e-6)
    assert _max_diff(worker.weights(one.adapters), two["weights"]) < 1e-5
    assert _max_diff(results[kind][1]["weights"], two["weights"]) == 0  # both ranks hold the same update
    ckpt = out / kind / "checkpoints" / "step_00000002"
    assert (ckpt / "sharded").is_dir() == (kind == "fsdp")  # FSDP2: DCP shards; DDP: rank 0's single files
    assert json.loads((ckpt / "config.json").read_text())["distributed"] == {"world_size": 2}
    resumed = worker._train(worker.run_config(tmp_path, kind=adapter, batch_size=2, resume_from=str(ckpt)),
                            tmp_path / "resumed")
    assert resumed.losses == pytest.approx(one.losses, rel=1e-5, abs=1e-6)
    assert _max_diff(worker.weights(resumed.adapters), worker.weights(one.adapters)) < 1e-5


@pytest.mark.slow
def test_a_cancel_on_one_rank_stops_every_rank_with_a_checkpoint(two_processes):
    out, results = two_processes
    assert [r["raised"] for r in results["stop"]] == ["StoppedByPeer", "Stop"]
    done = sorted(p.name for p in (out / "stop" / "checkpoints").iterdir())
    assert done == ["step_00000002"]
    evals = json.loads((out / "stop" / "checkpoints" / done[0] / "state.json").read_text())["evals"]
    assert [e["step"] for e in evals] == [0, 1, 2]  # held-out loss on rank 0, the other rank waited


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank(two_processes):
    out, results = two_processes
    first = BucketBatches({(32, 32): list(range(6)), (48, 32): [6, 7]}, {}, 1, 5, world_size=2,
                          caption_lengths=dict(enumerate([5, 5, 3, 3, 5, 4, 4, 6]))).epoch(0)[0][1]
    assert 2 in first and len(first) == 2  # step 1: one rank loads the NaN sample, the other a finite one
    assert [r["raised"] for r in results["nan"]] == ["TrainingError", "TrainingError"]
    assert "non-finite loss nan" in results["nan"][1]["message"]
    assert (out / "nan" / "checkpoints" / "step_00000000" / "state.json").is_file()


@pytest.mark.slow  # it reads the two-process run of the module fixture (about 50 s)
def test_resume_refuses_another_global_batch_naming_the_fix(two_processes, tmp_path):
    out, _ = two_processes
    cfg = worker.run_config(tmp_path, batch_size=1, resume_from=str(out / "ddp" / "checkpoints" / "step_00000002"))
    with pytest.raises(CheckpointError, match=r"train.batch_size: checkpoint 1, now 1 \(on 2 → 1 processes the "
                                              r"global batch 2 must stay: set train.batch_size to 2\)"):
        worker._train(cfg, tmp_path / "r")


# ---------------------------------------------------------------- the distributed sampler (no processes)

def _batches(world: int, batch: int, lengths=None, seed: int = 3):
    buckets = {(32, 32): list(range(10)), (48, 32): list(range(10, 15))}
    return BucketBatches(buckets, {0: 2}, batch, seed, world_size=world, caption_lengths=lengths)


@pytest.mark.parametrize("group", [False, True])
def test_global_batches_split_into_equal_shapes_without_repeats(group):
    from lumina2_train.train.batches import DataPosition

    lengths = {i: 3 + i % 3 for i in range(15)} if group else None
    two, one = _batches(2, 2, lengths), _batches(1, 4, lengths)
    for epoch in range(3):
        assert two.epoch(epoch) == one.epoch(epoch)  # a position means the same batches on 1 or 2 processes
    it = two.iterate(DataPosition())
    first = [next(it) for _ in range(len(two.epoch(0)))]
    epoch0 = [(b, idx) for pos, b, idx in first if pos.epoch == 0 or pos == DataPosition(1, 0)]
    seen = [i for _, idx in epoch0 for i in idx]
    assert all(len(idx) % 2 == 0 and 0 < len(idx) <= 4 for _, idx in epoch0)  # every rank gets the same shape
    assert seen.count(0) <= 2 and all(seen.count(i) <= 1 for i in range(1, 15))  # item 0 has repeats 2
    assert len(seen) >= 16 - 2  # at most one sample per bucket sits the epoch out
    assert two.epoch(0) != two.epoch(1)


def test_caption_length_grouping_fills_batches_of_one_length_first():
    lengths = {i: (7 if i % 2 else 9) for i in range(15)}
    batches = _batches(1, 2, lengths).epoch(0)
    mixed = [b for _, b in batches if len({lengths[i] for i in b}) > 1]
    assert len(mixed) <= 2  # at most one leftover batch per bucket mixes lengths
    plain = [b for _, b in _batches(1, 2).epoch(0) if len({lengths[i] for i in b}) > 1]
    assert len(plain) > len(mixed)


def test_rank_slices_cover_the_global_batch():
    assert [rank_slice(4, r, 2) for r in (0, 1)] == [(0, 2), (2, 4)]
    assert [rank_slice(2, r, 2) for r in (0, 1)] == [(0, 1), (1, 2)]


def test_effective_batch_and_lr_scaling(run_config, tmp_path):
    import dataclasses

    t = run_config(tmp_path, batch_size=2, grad_accum=3).train
    world = World(0, 4)
    assert effective_batch_size(t, world) == 24
    assert lr_factor(t, world) == 1.0
    assert lr_factor(dataclasses.replace(t, scale_lr="linear"), world) == 24.0
    assert lr_factor(dataclasses.replace(t, scale_lr="sqrt"), world) == pytest.approx(24**0.5)


def test_settings_that_cannot_run_distributed_are_named(run_config, tmp_path):
    import dataclasses

    cfg = run_config(tmp_path, optimizer_in_backward=True, max_grad_norm=0.0)
    assert distributed_errors(cfg, World()) == []
    assert any("train.optimizer_in_backward" in e for e in distributed_errors(cfg, World(0, 2)))
    full = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, kind="full"),
                               train=dataclasses.replace(cfg.train, optimizer_in_backward=False,
                                                         optimizer_states="8bit", checkpointing="auto"))
    errors = distributed_errors(full, World(0, 2))
    assert any("train.optimizer_states" in e for e in errors) and any("train.checkpointing" in e for e in errors)


def test_scale_lr_choice_is_checked_by_field():
    from lumina2_train.config import TrainConfig

    assert any(e.startswith("train.scale_lr 'cubic' is unknown") for e in TrainConfig(scale_lr="cubic").errors())


def test_checkpoints_from_before_caption_grouping_resume_with_it_off(run_config, tmp_path):
    from lumina2_train.train.checkpoint import check_compatible

    now = run_config(tmp_path).to_dict()
    old = json.loads(json.dumps(now))
    del old["train"]["group_by_caption_length"]
    with pytest.raises(CheckpointError, match="train.group_by_caption_length: checkpoint False, now True"):
        check_compatible(old, now, tmp_path)
    now["train"]["group_by_caption_length"] = False
    check_compatible(old, now, tmp_path)
