"""The running-job history behind the Train node's live loss chart, and the HTTP route that serves it.

The one module global of the ComfyUI side (DESIGN: nodes hold no state): `_JOBS` maps a Train node's id to its
latest job (prompt id, status, every step's `StepInfo.as_dict()`, last checkpoint), so the chart can redraw
after a page reload: `GET /lumina2t/history?node=<id>` (also under `/api/...`) returns that job, or every job
without `node`. It keeps the last `MAX_JOBS` jobs and thins a job's points to at most `MAX_POINTS`.
ComfyUI is imported inside functions only.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..train.hooks import StepInfo, TrainHooks

ROUTE = "/lumina2t/history"
MAX_JOBS = 16
MAX_POINTS = 4000


@dataclass
class Job:
    node: str
    prompt_id: str | None
    status: str = "starting"
    detail: str = ""
    started: float = field(default_factory=time.time)
    steps: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    lora: str | None = None

    def as_dict(self) -> dict:
        return {"node": self.node, "prompt_id": self.prompt_id, "status": self.status, "detail": self.detail,
                "started": self.started, "steps": list(self.steps), "checkpoint": self.checkpoint, "lora": self.lora}


_JOBS: dict[str, Job] = {}
_LOCK = threading.Lock()


def start_job(node: str, prompt_id: str | None) -> Job:
    """Register a new job for Train node `node` (replacing its previous one) and return it."""
    job = Job(str(node), prompt_id)
    with _LOCK:
        _JOBS.pop(job.node, None)
        _JOBS[job.node] = job
        while len(_JOBS) > MAX_JOBS:
            _JOBS.pop(next(iter(_JOBS)))
    return job


def _thin(points: list[dict]) -> list[dict]:
    """Every other point of the older half once the list is full: the recent curve stays exact."""
    half = len(points) // 2
    return points[:half:2] + points[half:]


def job_hooks(job: Job) -> TrainHooks:
    """TrainHooks that record the run into `job` (combine them with comfy_bridge.comfy_hooks)."""

    def on_step(info: StepInfo) -> None:
        with _LOCK:
            job.steps.append(info.as_dict())
            if len(job.steps) > MAX_POINTS:
                job.steps[:] = _thin(job.steps)

    def on_status(status: str, detail: str) -> None:
        job.status, job.detail = status, detail

    def on_checkpoint(path: Path, step: int) -> None:
        job.checkpoint = str(path)

    def on_lora_saved(path: Path, step: int) -> None:
        job.lora = str(path)

    return TrainHooks(on_step=on_step, on_status=on_status, on_checkpoint=on_checkpoint, on_lora_saved=on_lora_saved)


def finish_job(job: Job, status: str, detail: str = "") -> None:
    job.status, job.detail = status, detail


def stop_status(exc: BaseException, checkpoint: str | None, resume_from: str) -> tuple[str, str]:
    """(status, detail) of a run that raised `exc`, for the chart's status line.

    "cancelled" (ComfyUI's interrupt, Ctrl-C) names the resumable checkpoint and the `resume_from` value that
    continues the run; "failed" carries the error's first lines (our messages end with the fix) and the checkpoint.
    """
    is_cancel = not isinstance(exc, Exception) or "Interrupt" in type(exc).__name__
    where = f"resumable checkpoint: {checkpoint}" if checkpoint else "no checkpoint (stopped before the first step)"
    if is_cancel:
        hint = f"\nto continue, set resume_from to '{resume_from}' and queue again" if checkpoint else ""
        return "cancelled", where + hint
    message = "\n".join(str(exc).strip().splitlines()[:4])[:1000] or "(no message)"
    return "failed", f"{type(exc).__name__}: {message}" + (f"\n{where}" if checkpoint else "")


@contextmanager
def reporting_stop(hooks: TrainHooks, job: Job, run_dir: Path, output_root: str | Path) -> Iterator[None]:
    """Re-raise whatever stops the block after sending its stop_status through `hooks` (the chart, the job)."""
    try:
        yield
    except BaseException as e:
        rel = os.path.relpath(run_dir, output_root)
        hooks.on_status(*stop_status(e, job.checkpoint, str(run_dir) if rel.startswith("..") else rel))
        raise


def history(node: str | None = None) -> dict:
    """{"jobs": [...]} (every job), or {"job": {...} | None} for one Train node."""
    with _LOCK:
        if node is None:
            return {"jobs": [j.as_dict() for j in _JOBS.values()]}
        job = _JOBS.get(str(node))
        return {"job": job.as_dict() if job is not None else None}


def register_routes() -> bool:
    """Add GET /lumina2t/history to ComfyUI's server (once). False when no server runs (tests, scripts)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    routes = getattr(server, "routes", None)
    if routes is None:
        return False
    if any(getattr(r, "path", None) == ROUTE for r in routes):
        return True

    @routes.get(ROUTE)
    async def _history(request):
        return web.json_response(history(request.query.get("node")))

    return True


__all__ = ["MAX_JOBS", "MAX_POINTS", "ROUTE", "Job", "finish_job", "history", "job_hooks", "register_routes",
           "reporting_stop", "start_job", "stop_status"]
