"""The training loop: adapters on a backbone, trained from a cache, with hooks, checkpoints and resume.

Setup -> (validation) -> steps -> save. Every optimizer step draws its randomness from generators seeded
by (seed, step), so 4 straight steps equal 2 steps + resume + 2 steps. On interrupt, out-of-memory or any
other exception the last completed step is checkpointed before the exception propagates (same type).
Under torchrun every process runs this loop on its share of each global batch (train/distributed.py,
train/parallel.py); rank 0 alone reports and writes, and the ranks agree on every stop.
No ComfyUI imports: ComfyUI's progress and cancel arrive through `TrainHooks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import recipe
from ..adapters import AdapterSet, build_adapters, kind_of
from ..config import RunConfig
from ..errors import CheckpointError, ConfigError, TrainingError
from ..files.init_from import load_init_from
from ..storage.atomic import atomic_write_text
from . import prefetch
from .batches import BucketBatches, DataPosition
from .checkpoint import guard_run_folder, load_checkpoint, restore_rng
from .distributed import (
    StoppedByPeer,
    any_rank,
    barrier,
    current_world,
    distributed_errors,
    effective_batch_size,
    log_batch_and_lr,
    lr_factor,
    mean_over_ranks,
)
from .ema import EMA
from .evaluation import ClipScorer, holdout_indices
from .hooks import StepInfo, TrainHooks, ValidationImages, deferred_sigint
from .lowmem import build_low_memory, uses_low_memory_adamw
from .memory import with_oom_advice
from .optim import build_optimizer, build_scheduler, set_optimizer_mode
from .outputs import TrainerOutputs
from .parallel import (
    grad_norm_of,
    load_sharded,
    micro_step_context,
    uses_dcp,
    wrap_step,
)
from .prefetch import MicroBatches, batch_preparer, step_generator
from .resume import check_compatible, data_order
from .speed import CheckpointPlanner, compute_dtype, prepare_forward
from .step import micro_step_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapters: AdapterSet
    losses: list[float]
    sigmas: list[float]
    step: int
    run_dir: Path
    lora_path: Path | None = None
    checkpoint: Path | None = None
    validations: list[ValidationImages] = field(default_factory=list)


@dataclass
class _State:
    step: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    losses: list[float] = field(default_factory=list)
    sigmas: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step": k, "loss_by_sigma": {σ: loss}}


class Trainer(TrainerOutputs):
    """Owns one run. `run()` returns a TrainResult; the run folder holds config, checkpoints and samples."""

    def __init__(self, cfg: RunConfig, backbone, cache, hooks: TrainHooks | None = None, *, run_dir: str | Path,
                 lora_path: str | Path | None = None, decode=None, workflow: dict | None = None):
        self.cfg, self.backbone, self.cache = cfg, backbone, cache
        self.hooks = hooks or TrainHooks()
        self.run_dir = Path(run_dir)
        self.lora_path = Path(lora_path) if lora_path else self.run_dir / f"{Path(cfg.save.name).name}.safetensors"
        self.decode, self.workflow = decode, workflow
        self.device = backbone.device
        self.dtype = compute_dtype(cfg.train.precision, self.device)
        t = cfg.train
        self.timesteps = recipe.TimestepSampling(t.timestep_sampling, t.logit_mean, t.logit_std, t.shift_mode,
                                                 t.static_shift)
        self.state = _State()
        self.validations: list[ValidationImages] = []
        self.base_hash = ""
        self.world = current_world()
        self._agreed_stop = False  # a stop every rank took together (collective checkpoint possible)
        if not self.world.is_main:  # only rank 0 reports and writes; every rank can still be cancelled
            self.hooks = TrainHooks(check_interrupt=self.hooks.check_interrupt)

    # ------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, world = self.cfg, self.world
        errors = distributed_errors(cfg, world)
        if errors:
            raise ConfigError(errors)
        self.adapters = build_adapters(self.backbone, cfg.adapter, self.device, seed=cfg.train.seed)
        if cfg.adapter.init_from:
            load_init_from(self.adapters, self.backbone, cfg.adapter.init_from)
        v = cfg.validation
        self.holdout = holdout_indices(len(self.cache), v.eval_holdout, cfg.train.seed)
        held = set(self.holdout)
        buckets = {b: [i for i in idxs if i not in held] for b, idxs in self.cache.buckets().items()}
        buckets = {b: idxs for b, idxs in buckets.items() if idxs}
        self.data_order = data_order(self.cache, buckets)  # what a checkpoint's data position points at
        prepare_forward(self.backbone, cfg, len(buckets))
        # after prepare_forward (it resets the forward options); FSDP2 shards the adapters in place here
        self.step_module, self.parallel = wrap_step(self.backbone, self.adapters, cfg, world)
        self.forward = None if self.parallel == "single" else self.step_module
        self._build_optimizer()
        t = cfg.train
        self.ema = EMA(self.adapters, t.ema_decay, t.ema_every_n_steps, t.ema_on_cpu) if t.use_ema else None
        self.scorer = ClipScorer(v.clip_model, self.device) if v.evaluation_type == "clip" else None
        self.batches = self._batches(buckets)
        self.planner = CheckpointPlanner(self.backbone, cfg, self.dtype)
        self.base_hash = self.backbone.base_fingerprint()
        if cfg.resume_from:
            self._resume(cfg.resume_from)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if world.is_main:
            atomic_write_text(self.run_dir / "config.json", _json(self._config_dict()))
            if self.workflow is not None:
                atomic_write_text(self.run_dir / "workflow.json", _json(self.workflow))

    def _build_optimizer(self) -> None:
        """The optimizer at lr × the train.scale_lr factor (logged), and its schedule."""
        cfg = self.cfg
        train = dataclasses.replace(cfg.train, lr=cfg.train.lr * lr_factor(cfg.train, self.world))
        log_batch_and_lr(cfg.train, self.world)
        self.release = None  # gradient release (train.optimizer_in_backward) runs the update in backward
        self.dcp = uses_dcp(cfg, uses_low_memory_adamw(train))  # checkpoints through DCP (full fine-tune)
        if uses_low_memory_adamw(train):
            self.optimizer, self.release = build_low_memory(self.adapters.parameters(), train)
        else:
            self.optimizer = build_optimizer(self.adapters.parameters(), train, self.device.type)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        set_optimizer_mode(self.optimizer, training=True)

    def _batches(self, buckets: dict) -> BucketBatches:
        t = self.cfg.train
        repeats = {i: self.cache.repeats(i) for idxs in buckets.values() for i in idxs}
        group = t.group_by_caption_length and t.batch_size * self.world.size > 1
        lengths = {i: self.cache.caption_length(i) for i in repeats} if group else None
        return BucketBatches(buckets, repeats, t.batch_size, t.seed, world_size=self.world.size,
                             caption_lengths=lengths)

    def _config_dict(self) -> dict:
        d = self.cfg.to_dict()
        d["cache_fingerprint"] = getattr(self.cache, "fingerprint", "")
        d["base_model_hash"] = self.base_hash
        d["distributed"] = {"world_size": self.world.size}  # the global batch is batch_size × world_size
        d["data_order"] = self.data_order
        return d

    def _resume(self, path: str) -> None:
        ck = load_checkpoint(path)
        check_compatible(ck.config, self._config_dict(), ck.path)
        if (ck.sharded is not None) != self.dcp:
            raise CheckpointError(
                f"{ck.path}: this checkpoint holds {'sharded' if ck.sharded else 'single-file'} weights and "
                f"optimizer states, this run needs {'sharded' if self.dcp else 'single-file'} ones (full "
                "fine-tunes with optimizer 'adamw' are sharded, the low-memory optimizer is not). Resume with "
                "the checkpoint's train.optimizer_states and optimizer_in_backward")
        if ck.sharded is not None:
            load_sharded(ck.sharded, self.adapters, self.optimizer, self.ema)
        else:
            self.adapters.load_state_dict({k: v for k, v in ck.adapter.items() if not k.startswith("ema.")})
            if self.ema is not None:
                self.ema.load_state_dict(ck.adapter)
            self.optimizer.load_state_dict(ck.optimizer)
        self.scheduler.load_state_dict(ck.scheduler)
        restore_rng(ck.rng)
        self.state = _State(ck.step, ck.position, list(ck.losses), list(ck.meta.get("sigmas", [])),
                            list(ck.meta.get("evals", [])))
        log.info("resumed from %s at step %d", ck.path, ck.step)

    # ------------------------------------------------------------ one optimizer step
    def micro_batches(self, start: DataPosition) -> MicroBatches:
        """The run's micro-batches from data position `start` and step `state.step`, prepared ahead on a worker
        thread when training on CUDA from stored entries (train/prefetch.py); close it when done."""
        t = self.cfg.train
        cuda = self.device.type == "cuda"
        prepare = batch_preparer(self.cache, self.timesteps, t.seed, t.caption_dropout, self.world, pin=cuda)
        return MicroBatches(self.batches.iterate(start), prepare, self.state.step, t.grad_accum,
                            prefetch.prefetch_depth(self.device, self.cache))

    def _optimizer_step(self, feed: MicroBatches) -> tuple[float, float, str, float]:
        cfg, st = self.cfg.train, self.state
        losses, sigmas, bucket = [], [], (0, 0)
        position = st.position  # committed with the step below: a failed step is redone on resume
        for micro in range(cfg.grad_accum):
            if micro:
                self._check_interrupt()  # cancel within one step, even with long accumulation
            ready = feed.next()  # this rank's slice of the global batch, σ and noise drawn
            position, bucket = ready.position, ready.bucket
            torch.manual_seed(ready.gen.initial_seed() + self.world.rank)  # adapter dropout: the global RNG
            probe = self.planner.begin(ready.batch)
            with micro_step_context(self.step_module, self.parallel, micro == cfg.grad_accum - 1):
                loss, sigma = micro_step_loss(self.backbone, self.adapters.as_dict(), ready.batch, self.timesteps,
                                              weighting=cfg.loss_weighting, gamma=cfg.min_snr_gamma, gen=ready.gen,
                                              device=self.device, dtype=self.dtype,
                                              rollout=(cfg.rollout_probability, cfg.rollout_max_offset,
                                                       cfg.rollout_steps), forward=self.forward,
                                              drawn=(ready.sigma, ready.noise), split_lengths=cfg.split_caption_lengths)
                # with gradient release the update happens inside backward: Ctrl-C waits until it is done
                with deferred_sigint() if self.release is not None else contextlib.nullcontext():
                    (loss / cfg.grad_accum).backward()
            self.planner.end(probe, self.adapters.as_dict())
            losses.append(loss.detach())
            sigmas += sigma.tolist()
        total_loss = float(sum(losses)) / cfg.grad_accum  # one wait for the device per step, not per micro-step
        sigma_mean = sum(sigmas) / len(sigmas)
        world = self.world
        if world.is_distributed:  # every rank sees the global mean: a NaN anywhere stops every rank
            total_loss, sigma_mean = mean_over_ranks([total_loss, sigma_mean], world)
        params = [p for p in self.adapters.parameters() if p.grad is not None]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = grad_norm_of(params, max_norm) if params else 0.0
        label = f"{bucket[0]}x{bucket[1]}"
        with deferred_sigint():  # the update and the step count a checkpoint saves change together
            if not (math.isfinite(total_loss) and math.isfinite(grad_norm)):
                self._nonfinite(total_loss, grad_norm, label)
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            st.step += 1
            st.position = position
            if self.ema is not None:
                self.ema.update(st.step)
            st.losses.append(total_loss)
            st.sigmas.append(sigma_mean)
        return total_loss, st.sigmas[-1], label, grad_norm

    def _check_interrupt(self) -> None:
        """The hooks' cancel check; with several processes a stop on any rank stops every rank here."""
        if not self.world.is_distributed:
            self.hooks.check_interrupt()
            return
        stop = None
        try:
            self.hooks.check_interrupt()
        except BaseException as e:  # re-raised below, once every rank knows
            stop = e
        if any_rank(stop is not None, self.world):
            self._agreed_stop = True
            raise stop if stop is not None else StoppedByPeer(
                "train: another process of this run was stopped, so this one stopped too. Resume from the "
                "run folder's last checkpoint")

    def _nonfinite(self, loss: float, grad_norm: float, bucket: str) -> None:
        lr = self.scheduler.get_last_lr()[0]
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        if self.cfg.train.on_nonfinite == "skip":
            log.warning("step %d: %s (bucket %s, lr %.3g); the update was skipped", self.state.step + 1, what,
                        bucket, lr)
            return
        self.optimizer.zero_grad(set_to_none=True)
        path = self._checkpoint()
        raise TrainingError(
            f"train: step {self.state.step + 1} gave a non-finite {what} (bucket {bucket}, lr {lr:.3g}); the "
            f"last good state is saved in {path}. Lower train.lr, keep train.max_grad_norm > 0, or set "
            "train.on_nonfinite to 'skip'")

    # ------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train; the run folder (and the LoRA file, when elsewhere) are locked against other runs meanwhile.

        Raises:
            BusyError: another live run writes to the same run folder or LoRA file.
        """
        guard = guard_run_folder(self.run_dir, self.lora_path) if self.world.is_main else contextlib.nullcontext()
        with guard, torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self._setup()
            try:
                self._loop()
            except BaseException as e:
                self._save_on_failure(e)
                advised = with_oom_advice(e)
                if advised is e:
                    raise
                raise advised from e
        return TrainResult(self.adapters, self.state.losses, self.state.sigmas, self.state.step, self.run_dir,
                           self.lora_path, self.last_checkpoint, self.validations)

    def _loop(self) -> None:
        cfg, st, hooks = self.cfg, self.state, self.hooks
        total = cfg.train.steps
        every_ckpt, every_val = cfg.save.every_n_steps, cfg.validation.every_n_steps
        self.last_checkpoint = None
        every_eval = cfg.validation.eval_every_n_steps
        if st.step == 0:
            self._validate()
            if every_eval:
                self._evaluate()
        with self.micro_batches(st.position) as feed:  # its worker stops with the loop, however it ends
            hooks.on_status("training", f"step {st.step}/{total}")
            t_start, first = time.perf_counter(), st.step
            per_step = effective_batch_size(cfg.train, self.world)
            while st.step < total:
                self._check_interrupt()
                loss, sigma, bucket, gnorm = self._optimizer_step(feed)
                elapsed = time.perf_counter() - t_start
                rate = (st.step - first) * per_step / max(elapsed, 1e-9)
                hooks.on_step(StepInfo(st.step, total, loss, self.scheduler.get_last_lr()[0], sigma, rate,
                                       (total - st.step) * per_step / max(rate, 1e-9), st.position.epoch, bucket,
                                       gnorm, _memory_gib(self.device)))
                self._periodic(every_ckpt, every_val, every_eval)
        hooks.on_status("saving", str(self.lora_path))
        self.last_checkpoint = self._checkpoint()
        self.save_lora(self.lora_path)
        if kind_of(cfg.adapter).diffusers_folder:
            self.save_diffusers(self.run_dir / "transformer")
        if self.world.is_main:
            atomic_write_text(self.run_dir / "losses.json", _json({"loss": st.losses, "sigma": st.sigmas,
                                                                  "eval": st.evals}))
        self._validate()
        barrier(self.world)  # every file is written when any rank returns

    def _periodic(self, every_ckpt: int, every_val: int, every_eval: int) -> None:
        """Checkpoint + intermediate LoRA, validation images and evaluation loss, each on its own schedule."""
        step, total = self.state.step, self.cfg.train.steps
        if every_ckpt and step % every_ckpt == 0 and step < total:
            self.last_checkpoint = self._checkpoint()
            self.save_lora(self.run_dir / "loras" / f"{Path(self.cfg.save.name).name}_step{step:06d}.safetensors")
        if every_val and step % every_val == 0 and step < total:
            self._validate()
        if every_eval and step % every_eval == 0:
            self._evaluate()

    def _save_on_failure(self, exc: BaseException) -> None:
        if not hasattr(self, "optimizer") or isinstance(exc, TrainingError):
            return
        together = self._agreed_stop or not self.world.is_distributed
        if not together and (self.dcp or not self.world.is_main):
            # this rank failed alone: the others may wait in a collective, so only rank 0's own copy of
            # replicated adapters can be written; a sharded run resumes from its last periodic checkpoint
            log.error("process %d stopped alone (%s); resume from the last periodic checkpoint", self.world.rank,
                      type(exc).__name__)
            return
        try:
            self.optimizer.zero_grad(set_to_none=True)
            self.last_checkpoint = self._checkpoint(collective=together)
            log.warning("run stopped (%s); resumable checkpoint at %s", type(exc).__name__, self.last_checkpoint)
            cancelled = not isinstance(exc, Exception) or "Interrupt" in type(exc).__name__ or \
                isinstance(exc, StoppedByPeer)
            self.hooks.on_status("cancelled" if cancelled else "failed", str(self.last_checkpoint))
        except Exception as save_error:  # never hide the original exception
            log.error("could not write the resumable checkpoint: %s", save_error)


def _memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def _json(obj) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def train_lora(cfg: RunConfig, backbone, cache, hooks: TrainHooks | None = None, **kwargs) -> TrainResult:
    """Train adapters per `cfg` on `backbone` from `cache`; see Trainer for the keyword arguments."""
    return Trainer(cfg, backbone, cache, hooks, **kwargs).run()


__all__ = ["TrainResult", "Trainer", "step_generator", "train_lora"]
