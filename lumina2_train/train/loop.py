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
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import recipe
from ..adapters import AdapterSet, kind_of
from ..cache.source import CacheSource
from ..config import RunConfig
from ..errors import CheckpointError, TrainingError
from ..storage.atomic import atomic_write_text
from . import prefetch
from .batches import DataPosition
from .checkpoint import guard_run_folder, load_checkpoint, restore_rng
from .distributed import StoppedByPeer, any_rank, barrier, current_world, effective_batch_size, mean_over_ranks
from .hooks import StepInfo, TrainHooks, ValidationImages, deferred_sigint
from .memory import with_oom_advice
from .outputs import TrainerOutputs
from .parallel import grad_norm_of, load_sharded
from .prefetch import MicroBatches, batch_preparer, step_generator
from .resume import check_compatible
from .setup import build_setup
from .speed import compiled_region, compute_dtype
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
    last_checkpoint: Path | None = None  # the newest checkpoint this run wrote
    agreed_stop: bool = False  # a stop every rank took together (collective checkpoint possible)

    def resume_from(self, ck) -> None:
        """Continue from checkpoint `ck` (train/checkpoint.py's loaded form)."""
        self.step, self.position = ck.step, ck.position
        self.losses[:], self.sigmas[:] = list(ck.losses), list(ck.meta.get("sigmas", []))
        self.evals[:] = list(ck.meta.get("evals", []))


class Trainer(TrainerOutputs):
    """Owns one run: its set-up (train/setup.py, built here) and its state. `run()` returns a TrainResult; the
    run folder holds config, checkpoints and samples."""

    def __init__(self, cfg: RunConfig, backbone, cache: CacheSource, hooks: TrainHooks | None = None, *,
                 run_dir: str | Path, lora_path: str | Path | None = None, decode=None, workflow: dict | None = None):
        self.cfg, self.backbone, self.cache = cfg, backbone, cache
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
        self.world = current_world()
        hooks = hooks or TrainHooks()
        # only rank 0 reports and writes; every rank can still be cancelled
        self.hooks = hooks if self.world.is_main else TrainHooks(check_interrupt=hooks.check_interrupt)
        with torch.random.fork_rng(devices=self._rng_devices()):  # the caller's random stream is not drawn from
            self.setup = build_setup(cfg, backbone, cache, self.world, self.dtype)

    def _rng_devices(self) -> list[torch.device]:
        return [self.device] if self.device.type == "cuda" else []

    def _write_run_files(self) -> None:
        if self.world.is_main:
            atomic_write_text(self.run_dir / "config.json", _json(self._config_dict()))
            if self.workflow is not None:
                atomic_write_text(self.run_dir / "workflow.json", _json(self.workflow))

    def _config_dict(self) -> dict:
        d = self.cfg.to_dict()
        d["cache_fingerprint"] = self.cache.fingerprint
        d["base_model_hash"] = self.setup.base_hash
        d["distributed"] = {"world_size": self.world.size}  # the global batch is batch_size × world_size
        d["data_order"] = self.setup.data_order
        return d

    def _resume(self, path: str) -> None:
        ck = load_checkpoint(path)
        check_compatible(ck.config, self._config_dict(), ck.path)
        su = self.setup
        if (ck.sharded is not None) != su.sharded_checkpoints:
            raise CheckpointError(
                f"{ck.path}: this checkpoint holds {'sharded' if ck.sharded else 'single-file'} weights and "
                f"optimizer states, this run needs {'sharded' if su.sharded_checkpoints else 'single-file'} ones (full "
                "fine-tunes with optimizer 'adamw' are sharded, the low-memory optimizer is not). Resume with "
                "the checkpoint's train.optimizer_states and optimizer_in_backward")
        if ck.sharded is not None:
            load_sharded(ck.sharded, su.adapters, su.optimizer, su.ema)
        else:
            su.adapters.load_state_dict({k: v for k, v in ck.adapter.items() if not k.startswith("ema.")})
            if su.ema is not None:
                su.ema.load_state_dict(ck.adapter)
            su.optimizer.load_state_dict(ck.optimizer)
        su.scheduler.load_state_dict(ck.scheduler)
        restore_rng(ck.rng)
        self.state.resume_from(ck)
        log.info("resumed from %s at step %d", ck.path, ck.step)

    # ------------------------------------------------------------ one optimizer step
    def micro_batches(self, start: DataPosition) -> MicroBatches:
        """The run's micro-batches from data position `start` and step `state.step`, prepared ahead on a worker
        thread when training on CUDA from stored entries (train/prefetch.py); close it when done."""
        t = self.cfg.train
        cuda = self.device.type == "cuda"
        prepare = batch_preparer(self.cache, self.timesteps, t.seed, t.caption_dropout, self.world, pin=cuda)
        return MicroBatches(self.setup.batches.iterate(start), prepare, self.state.step, t.grad_accum,
                            prefetch.prefetch_depth(self.device, self.cache))

    def _optimizer_step(self, feed: MicroBatches) -> tuple[float, float, str, float]:
        cfg, st, su = self.cfg.train, self.state, self.setup
        losses, sigmas, bucket = [], [], (0, 0)
        position = st.position  # committed with the step below: a failed step is redone on resume
        with compiled_region(su.recompile_limit):  # every compile (forward, recompute, planner) happens here
            for micro in range(cfg.grad_accum):
                if micro:
                    self._check_interrupt()  # cancel within one step, even with long accumulation
                ready = feed.next()  # this rank's slice of the global batch, σ and noise drawn
                position, bucket = ready.position, ready.bucket
                loss, sigma = self._micro_step(ready, micro == cfg.grad_accum - 1)
                losses.append(loss)
                sigmas += sigma.tolist()
        total_loss = float(sum(losses)) / cfg.grad_accum  # one wait for the device per step, not per micro-step
        sigma_mean = sum(sigmas) / len(sigmas)
        world = self.world
        if world.is_distributed:  # every rank sees the global mean: a NaN anywhere stops every rank
            total_loss, sigma_mean = mean_over_ranks([total_loss, sigma_mean], world)
        params = [p for p in su.adapters.parameters() if p.grad is not None]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = grad_norm_of(params, max_norm) if params else 0.0
        label = f"{bucket[0]}x{bucket[1]}"
        with deferred_sigint():  # the update and the step count a checkpoint saves change together
            if not (math.isfinite(total_loss) and math.isfinite(grad_norm)):
                self._nonfinite(total_loss, grad_norm, label)
            else:
                su.optimizer.step()
            su.optimizer.zero_grad(set_to_none=True)
            su.scheduler.step()
            st.step += 1
            st.position = position
            if su.ema is not None:
                su.ema.update(st.step)
            st.losses.append(total_loss)
            st.sigmas.append(sigma_mean)
        return total_loss, st.sigmas[-1], label, grad_norm

    def _micro_step(self, ready, is_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward and backward on a prepared micro-batch: (the detached loss, σ per sample)."""
        cfg, su = self.cfg.train, self.setup
        torch.manual_seed(ready.gen.initial_seed() + self.world.rank)  # adapter dropout: the global RNG
        probe = su.planner.begin(ready.batch)
        with su.strategy.micro_step(is_last):
            loss, sigma = micro_step_loss(self.backbone, su.adapters.as_dict(), ready.batch, self.timesteps,
                                          weighting=cfg.loss_weighting, gamma=cfg.min_snr_gamma, gen=ready.gen,
                                          device=self.device, dtype=self.dtype,
                                          rollout=(cfg.rollout_probability, cfg.rollout_max_offset,
                                                   cfg.rollout_steps), forward=su.strategy.forward,
                                          drawn=(ready.sigma, ready.noise), split_lengths=cfg.split_caption_lengths)
            # with gradient release the update happens inside backward: Ctrl-C waits until it is done
            with deferred_sigint() if su.release is not None else contextlib.nullcontext():
                (loss / cfg.grad_accum).backward()
        su.planner.end(probe, su.adapters.as_dict())
        return loss.detach(), sigma

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
            self.state.agreed_stop = True
            raise stop if stop is not None else StoppedByPeer(
                "train: another process of this run was stopped, so this one stopped too. Resume from the "
                "run folder's last checkpoint")

    def _nonfinite(self, loss: float, grad_norm: float, bucket: str) -> None:
        lr = self.setup.scheduler.get_last_lr()[0]
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        if self.cfg.train.on_nonfinite == "skip":
            log.warning("step %d: %s (bucket %s, lr %.3g); the update was skipped", self.state.step + 1, what,
                        bucket, lr)
            return
        self.setup.optimizer.zero_grad(set_to_none=True)
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
        with guard, torch.random.fork_rng(devices=self._rng_devices()):
            if self.cfg.resume_from:
                self._resume(self.cfg.resume_from)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_files()
            try:
                self._loop()
            except BaseException as e:
                self._save_on_failure(e)
                advised = with_oom_advice(e)
                if advised is e:
                    raise
                raise advised from e
        st = self.state
        return TrainResult(self.setup.adapters, st.losses, st.sigmas, st.step, self.run_dir, self.lora_path,
                           st.last_checkpoint, self.validations)

    def _loop(self) -> None:
        cfg, st, hooks = self.cfg, self.state, self.hooks
        total = cfg.train.steps
        every_ckpt, every_val = cfg.save.every_n_steps, cfg.validation.every_n_steps
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
                hooks.on_step(StepInfo(st.step, total, loss, self.setup.scheduler.get_last_lr()[0], sigma, rate,
                                       (total - st.step) * per_step / max(rate, 1e-9), st.position.epoch, bucket,
                                       gnorm, _memory_gib(self.device)))
                self._periodic(every_ckpt, every_val, every_eval)
        hooks.on_status("saving", str(self.lora_path))
        st.last_checkpoint = self._checkpoint()
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
            self.state.last_checkpoint = self._checkpoint()
            self.save_lora(self.run_dir / "loras" / f"{Path(self.cfg.save.name).name}_step{step:06d}.safetensors")
        if every_val and step % every_val == 0 and step < total:
            self._validate()
        if every_eval and step % every_eval == 0:
            self._evaluate()

    def _save_on_failure(self, exc: BaseException) -> None:
        if isinstance(exc, TrainingError):
            return
        st = self.state
        together = st.agreed_stop or not self.world.is_distributed
        if not together and (self.setup.sharded_checkpoints or not self.world.is_main):
            # this rank failed alone: the others may wait in a collective, so only rank 0's own copy of
            # replicated adapters can be written; a sharded run resumes from its last periodic checkpoint
            log.error("process %d stopped alone (%s); resume from the last periodic checkpoint", self.world.rank,
                      type(exc).__name__)
            return
        try:
            self.setup.optimizer.zero_grad(set_to_none=True)
            st.last_checkpoint = self._checkpoint(collective=together)
            log.warning("run stopped (%s); resumable checkpoint at %s", type(exc).__name__, st.last_checkpoint)
            cancelled = not isinstance(exc, Exception) or "Interrupt" in type(exc).__name__ or \
                isinstance(exc, StoppedByPeer)
            self.hooks.on_status("cancelled" if cancelled else "failed", str(st.last_checkpoint))
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
