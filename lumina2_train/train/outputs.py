"""The Trainer's outputs: resumable checkpoints, LoRA / full-model files, validation images and held-out loss.

A mixin of train/loop.py's Trainer (it reads the run's set-up and state; it never steps the optimizer). Rank 0 writes;
under FSDP2 the weights are gathered first. No ComfyUI imports.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..adapters.kinds import kind_of, network_metadata
from ..files.file_metadata import MODEL_ARCHITECTURE, for_family
from ..files.formats import lora_metadata, save_adapters
from ..files.fullmodel import save_diffusers_transformer, save_diffusion_model
from .checkpoint import CheckpointState, capture_rng, checkpoint_temp, save_checkpoint
from .distributed import barrier, broadcast_object
from .evaluation import heldout_loss
from .hooks import deferred_sigint
from .optim import set_optimizer_mode
from .parallel import SHARDED, save_sharded
from .validation import run_validation

log = logging.getLogger(__name__)


class TrainerOutputs:
    def _checkpoint(self, collective: bool = True) -> Path | None:
        """Write the resumable checkpoint. Sharded (DCP): every rank writes its shards, rank 0 the rest.
        Otherwise rank 0 writes it all (adapters are the same on every rank). `collective`: every rank is
        here (returns rank 0's path on every rank); False after a failure of this rank alone."""
        st, world, su = self.state, self.world, self.setup
        tmp, tensors, optim = None, {}, {}
        if su.sharded_checkpoints:
            tmp = broadcast_object(checkpoint_temp(self.run_dir, st.step) if world.is_main else None, world)
            save_sharded(tmp / SHARDED, su.adapters, su.optimizer, su.ema)
        elif world.is_main:
            tensors = dict(su.adapters.state_dict())
            tensors.update(su.ema.state_dict() if su.ema is not None else {})
            optim = su.optimizer.state_dict()
        path = None
        if world.is_main:
            ck = CheckpointState(st.step, st.position, st.losses, tensors, optim, su.scheduler.state_dict(),
                                 capture_rng(), self._config_dict(), {"sigmas": st.sigmas, "evals": st.evals})
            with deferred_sigint():  # Ctrl-C mid-write would surface as torch.save's RuntimeError, not as itself
                path = save_checkpoint(self.run_dir, ck, self.cfg.save.keep_last, tmp=tmp)
            self.hooks.on_checkpoint(path, st.step)
        return broadcast_object(path, world) if collective else path

    @contextlib.contextmanager
    def _evaluation_weights(self, use_ema: bool):
        """The weights to evaluate or export: schedule-free's averaged ones, and the EMA when asked."""
        su = self.setup
        set_optimizer_mode(su.optimizer, training=False)
        try:
            with su.ema.swapped_in() if (use_ema and su.ema is not None) else contextlib.nullcontext():
                yield
        finally:
            set_optimizer_mode(su.optimizer, training=True)

    def save_lora(self, path: Path) -> Path | None:
        """Write the adapter (or full model) file on rank 0; a sharded model is gathered for it first."""
        with self.setup.strategy.gathered():
            if not self.world.is_main:
                return None
            with self._evaluation_weights(self.cfg.save.save_ema):
                saved = self._save_lora(path)
        self.hooks.on_lora_saved(saved, self.state.step)
        return saved

    def _save_lora(self, path: Path) -> Path:
        a = self.cfg.adapter
        md = lora_metadata(rank=a.rank, alpha=a.alpha, step=self.state.step, config=self.cfg.to_dict(),
                           base_hash=self.setup.base_hash, title=Path(self.cfg.save.name).name, workflow=self.workflow,
                           extra={"lumina2t.system_prompt": self.cache.system_prompt,
                                  **network_metadata(a)})
        if kind_of(a).writes_model:  # the whole fine-tuned DiT, a file ComfyUI's UNETLoader opens
            md = {**for_family(md, self.backbone.arch.family), "modelspec.architecture": MODEL_ARCHITECTURE.get(
                self.backbone.arch.family, "lumina-2")}
            return save_diffusion_model(self.setup.adapters, self.backbone, path, dtype=self.cfg.save.dtype,
                                        metadata=md)
        return save_adapters(self.setup.adapters, path, fmt=self.cfg.save.format, dtype=self.cfg.save.dtype,
                             arch=self.backbone.arch, metadata=md)

    def save_diffusers(self, folder: Path) -> Path:
        """A full fine-tune as a diffusers transformer folder (the EMA weights when save.save_ema)."""
        with self.setup.strategy.gathered():
            if not self.world.is_main:
                return folder
            with self._evaluation_weights(self.cfg.save.save_ema):
                return save_diffusers_transformer(self.setup.adapters, self.backbone, folder, dtype=self.cfg.save.dtype)

    def _validate(self) -> None:
        v = self.cfg.validation
        if not (v.prompts or v.prompt_library):
            return
        if self.setup.strategy.is_sharded:
            log.warning("validation previews are not rendered while a full fine-tune is sharded (FSDP2)")
            return
        if self.world.is_main:
            self._render_validation(v)
        barrier(self.world)

    def _render_validation(self, v) -> None:
        self.hooks.on_status("validating", f"step {self.state.step}")
        with torch.no_grad(), self._evaluation_weights(v.use_ema):
            images = run_validation(self.backbone, self.setup.adapters.as_dict(), self.cache, v, self.state.step,
                                    decode=self.decode, folder=self.run_dir / "samples", device=self.device,
                                    dtype=self.dtype, scorer=self.setup.scorer)
        self.validations.append(images)
        if images.clip_scores:
            log.info("step %d CLIP scores: %s", self.state.step,
                     ", ".join(f"{n}={c:.1f}" for n, c in zip(images.names, images.clip_scores)))
        self.hooks.on_validation(images)

    def _evaluate(self) -> None:
        """Held-out loss at the fixed σ bins (validation.eval_sigmas), on rank 0 (none when sharded)."""
        v = self.cfg.validation
        if not self.setup.strategy.is_sharded and self.world.is_main:
            with self._evaluation_weights(v.use_ema):
                losses = heldout_loss(self.backbone, self.setup.adapters.as_dict(), self.cache, self.setup.holdout,
                                      v.eval_sigmas, seed=self.cfg.train.seed, device=self.device, dtype=self.dtype)
            self.state.evals.append({"step": self.state.step, "loss_by_sigma": losses})
            self.hooks.on_eval(self.state.step, losses)
        barrier(self.world)
