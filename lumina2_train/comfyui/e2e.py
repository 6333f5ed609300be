"""`comfy-e2e --comfyui PATH [--python PY]`: the training example workflow, end to end, on a real ComfyUI server.

In a temporary base folder (ComfyUI's --base-directory: models, custom_nodes, input, output, temp, user) it links
this pack into custom_nodes/, writes the tiny ComfyUI-layout models of the workflow's family (Lumina2; Z-Image
when its UNETLoader loads a z_image file, as --workflow "example_workflows/Train a Z-Image LoRA and sample with
it.json" does: ComfyUI 0.33 or newer, 2.8 GB of tiny files) and the demo images, starts `PY main.py
--cpu` on 127.0.0.1 (a free port), queues --workflow (default example_workflows/"Train a LoRA and sample with
it.json") over HTTP with the tiny files, small sizes and a few steps substituted, follows the websocket, checks the
LoRA file (every key under diffusion_model., the step in its metadata), the lumina2t.* events, the progress events
and the sample image, then queues the same graph again resuming that run for 2 more steps, checks the step count
continues, and stops the server it started. `--json` ends with one JSON object: ok, lora, steps, resumed_steps,
... (docs/e2e.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import ComfyClient, ServerError

log = logging.getLogger("lumina2_train")
PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui-lumina2-train"
WORKFLOW = "Train a LoRA and sample with it.json"
TRAIN_NODE = "Lumina2T_TrainLoRA"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--comfyui", required=True, help="the ComfyUI folder (holds main.py)")
    p.add_argument("--python", default=None,
                   help="the Python that runs ComfyUI (default: $COMFYUI_PYTHON, else this Python)")
    p.add_argument("--steps", type=int, default=4, help="training steps of the first run (default 4)")
    p.add_argument("--no-resume", action="store_true", help="skip the second, resumed run")
    p.add_argument("--workflow", default=str(PACK_ROOT / "example_workflows" / WORKFLOW),
                   help="the UI-format training workflow to queue (default: the bundled example)")
    p.add_argument("--workdir", default=None, help="keep the base folder here (default: a temporary folder, removed)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed per queued prompt")
    p.add_argument("--json", action="store_true", help="end with one JSON object on stdout")


# ---------------------------------------------------------------- the base folder

def workflow_family(workflow: dict) -> str:
    """"zimage" when the workflow's UNETLoader loads a Z-Image file (its name says z_image or z-image, as
    z_image_turbo_bf16.safetensors does), else "lumina2": which tiny models stand in for its files."""
    names = [str(v).lower().replace("-", "_") for n in workflow.get("nodes", []) if n.get("type") == "UNETLoader"
             for v in (n.get("widgets_values") or [])[:1]]
    return "zimage" if any("z_image" in name for name in names) else "lumina2"


def tiny_model_names(family: str) -> dict[str, str]:
    """The tiny ComfyUI-layout files' names by loader input (diffusion_model, text_encoder, vae)."""
    from ..tiny.comfy_layout import FILE_NAMES
    from ..tiny.zimage import comfy_zimage_file_names

    return comfy_zimage_file_names() if family == "zimage" else {k: Path(v).name for k, v in FILE_NAMES.items()}


def prepare_base(base: Path, family: str = "lumina2") -> dict[str, str]:
    """Folders, the pack link, the family's tiny models and the demo dataset; returns the tiny model names by
    loader input."""
    from ..demo import write_demo_dataset
    from ..tiny.comfy_layout import FILE_NAMES, write_comfy_tiny_models
    from ..tiny.zimage import COMFY_QWEN3_FILE_NAME, write_comfy_tiny_zimage_models

    if not (PACK_ROOT / "__init__.py").is_file() or not (PACK_ROOT / "nodes").is_dir():
        raise ServerError(f"{PACK_ROOT}: not the pack's source tree (no __init__.py or nodes/). Run comfy-e2e from a "
                          "checkout of comfyui-lumina2-train")
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/loras"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    names = tiny_model_names(family)
    if family == "zimage":
        files = {"diffusion_models/" + names["diffusion_model"], COMFY_QWEN3_FILE_NAME, FILE_NAMES["vae"]}
        write, size = write_comfy_tiny_zimage_models, "about 2.8 GB"
    else:
        files, write, size = set(FILE_NAMES.values()), write_comfy_tiny_models, "about 1 GB"
    if not all((base / "models" / f).is_file() for f in files):
        log.info("writing the tiny ComfyUI-layout %s models (%s) ...", family, size)
        write(base / "models", seed=0)
    write_demo_dataset(base / "input" / "lumina2_dataset", size_px=64)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(comfyui: Path, python: str, base: Path, port: int,
                 extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    """ComfyUI's main.py on the CPU, bound to 127.0.0.1:`port`, with `base` as its base directory; `extra_args`
    are passed on (e.g. `--front-end-root DIR`, a frontend served from a folder)."""
    log_path = base / "server.log"
    cmd = [python, str(comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-auto-launch", *extra_args]
    log.info("starting ComfyUI: %s", " ".join(cmd))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(comfyui), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, log_path


def wait_ready(client: ComfyClient, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"ComfyUI exited with code {proc.returncode} while starting; see {log_path}")
        if client.is_up():
            break
        time.sleep(1.0)
    else:
        raise ServerError(f"ComfyUI did not answer within {timeout_s:.0f} s; see {log_path}")
    failed = [line for line in log_path.read_text(errors="replace").splitlines()
              if PACK_NAME in line and ("IMPORT FAILED" in line or "Cannot import" in line or "Error" in line)]
    if failed:
        raise ServerError(f"the pack did not load: {failed[0].strip()} (see {log_path})")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# ---------------------------------------------------------------- the prompt

def tiny_settings(models: dict[str, str], steps: int) -> dict[str, dict]:
    """Widget values by node type: the tiny models, 64 px images, no system prompt, a few steps, validation every 2
    steps."""
    return {
        "UNETLoader": {"unet_name": models["diffusion_model"], "weight_dtype": "default"},
        "VAELoader": {"vae_name": models["vae"]},
        "Lumina2T_LoadDataset": {"folder": "lumina2_dataset", "resolution": 64, "min_size_px": 0},
        # no system prompt: fewer tokens per step on ComfyUI's 2304-wide model (docs/ci.md)
        "Lumina2T_CacheLatentsText": {"system_prompt": "none"},
        "Lumina2T_ConfigureValidation": {"prompts": "a red circle on a cream background", "steps": 2, "width": 64,
                                         "height": 64, "every_n_steps": 2},
        "Lumina2T_ConfigureAdapter": {"rank": 4, "alpha": 4.0},
        TRAIN_NODE: {"steps": steps, "lr": 1e-3, "save_every_n_steps": 2, "lora_name": "e2e/lumina2_tiny",
                     "resume_from": ""},
        "EmptySD3LatentImage": {"width": 64, "height": 64},
        "KSampler": {"steps": 2},
    }


def tiny_prompt(workflow: dict, object_info: dict, models: dict[str, str], steps: int) -> dict:
    """The workflow as an API prompt with the tiny models, 64 px images and a few steps."""
    from .workflow import nodes_of_type, ui_to_api

    prompt = ui_to_api(workflow, object_info)
    sets = tiny_settings(models, steps)
    for node in prompt.values():
        node["inputs"].update(sets.get(node["class_type"], {}))
        if node["class_type"] == "CLIPLoader":  # the stock loader builds the 2.6 B Gemma2 / 4 B Qwen3 (docs/e2e.md)
            node["class_type"], node["inputs"] = "Lumina2T_LoadTinyCLIP", {"clip_name": models["text_encoder"]}
    if len(nodes_of_type(prompt, TRAIN_NODE)) != 1:
        raise ServerError(f"the workflow must hold exactly one {TRAIN_NODE} node")
    return prompt


def tiny_workflow(workflow: dict, object_info: dict, models: dict[str, str], steps: int) -> dict:
    """The same substitutions in the UI-format workflow (what a browser loads): widget values, and the stock
    CLIPLoader node turned into Lumina2T_LoadTinyCLIP in place (same id, links and output)."""
    from .workflow import widget_names

    wf = copy.deepcopy(workflow)
    sets = tiny_settings(models, steps)
    for node in wf["nodes"]:
        node.get("properties", {}).pop("models", None)  # the real files' downloads, not the tiny ones
        if node["type"] == "CLIPLoader":
            node["type"], node["widgets_values"] = "Lumina2T_LoadTinyCLIP", [models["text_encoder"]]
            node["properties"] = {"Node name for S&R": "Lumina2T_LoadTinyCLIP"}
            continue
        if node["type"] not in sets:
            continue
        values, i = list(node.get("widgets_values") or []), 0
        for name, count in widget_names(object_info[node["type"]]):
            if name in sets[node["type"]] and i < len(values):
                values[i] = sets[node["type"]][name]
            i += count
        node["widgets_values"] = values
    return wf


# ---------------------------------------------------------------- checks

def check_lora(path: str | None, steps: int, problems: list[str]) -> None:
    if not path or not Path(path).is_file():
        problems.append(f"no LoRA file was written (got {path!r})")
        return
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata() or {}
    if not keys or not all(k.startswith("diffusion_model.") for k in keys):
        problems.append(f"{path}: keys outside diffusion_model. ({[k for k in keys if '.' not in k][:3]})")
    if meta.get("lumina2t.step") != str(steps):
        problems.append(f"{path}: metadata step {meta.get('lumina2t.step')!r}, expected {steps}")


def check_run(run, train_id: str, first: int, last: int, problems: list[str], *, sample_ids: list[str]) -> None:
    what = f"prompt {run.prompt_id}"
    if run.status != "success":
        problems.append(f"{what}: {run.status} {json.dumps(run.error)[:1500] if run.error else ''}")
        return
    steps = [d["step"] for d in run.of_type("lumina2t.step") if str(d.get("node")) == train_id]
    if steps != list(range(first, last + 1)):
        problems.append(f"{what}: lumina2t.step events for steps {steps}, expected {first}..{last}")
    progress = [d for d in run.of_type("progress") if str(d.get("node")) == train_id]
    if len(progress) < last - first + 1:
        problems.append(f"{what}: {len(progress)} progress events from the Train node for {last - first + 1} steps")
    saved = {str(d.get("node")) for d in run.of_type("executed") if (d.get("output") or {}).get("images")}
    if not set(sample_ids) <= saved:
        problems.append(f"{what}: no image came out of the sampling branch (Save Image nodes {sample_ids})")


# ---------------------------------------------------------------- the run

def run_e2e(args: argparse.Namespace, base: Path) -> dict:
    started = time.monotonic()
    workflow = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
    models = prepare_base(base, workflow_family(workflow))
    comfyui = Path(args.comfyui).expanduser().resolve()
    if not (comfyui / "main.py").is_file():
        raise ServerError(f"--comfyui {comfyui}: no main.py there. Give the ComfyUI folder")
    python = args.python or os.environ.get("COMFYUI_PYTHON") or sys.executable
    python = os.path.abspath(python) if os.sep in python else (shutil.which(python) or python)  # no symlink resolve
    port = args.port or free_port()
    proc, log_path = start_server(comfyui, python, base, port)
    client = ComfyClient("127.0.0.1", port)
    result = {"ok": False, "lora": None, "steps": 0, "server_log": str(log_path), "problems": []}
    try:
        wait_ready(client, proc, log_path, timeout_s=300)
        prompt = tiny_prompt(workflow, client.get("/object_info", timeout_s=120), models, args.steps)
        result.update(_queue_twice(client, proc, prompt, workflow, args))
    finally:
        stop_server(proc)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["ok"] = not result["problems"]
    return result


def _queue_twice(client: ComfyClient, proc, prompt: dict, workflow: dict, args) -> dict:
    from .workflow import nodes_of_type

    train_id = nodes_of_type(prompt, TRAIN_NODE)[0]
    problems: list[str] = []
    alive = lambda: proc.poll() is None  # noqa: E731
    ws = client.connect()
    try:
        run = client.follow(ws, client.queue(prompt, {"workflow": workflow}), timeout_s=args.timeout, alive=alive)
        check_run(run, train_id, 1, args.steps, problems, sample_ids=nodes_of_type(prompt, "SaveImage"))
        job = client.get(f"/lumina2t/history?node={train_id}")["job"] or {}
        check_lora(job.get("lora"), args.steps, problems)
        out = {"lora": job.get("lora"), "steps": len(job.get("steps", [])), "prompt_id": run.prompt_id,
               "events": _counts(run), "previews": run.previews}
        if args.no_resume or problems:
            return {**out, "problems": problems}
        run_folder = Path(job["checkpoint"]).parent.parent.name  # <output>/lumina2_train/<run>/checkpoints/step_N
        prompt[train_id]["inputs"].update(resume_from=run_folder, steps=args.steps + 2)
        rerun = client.follow(ws, client.queue(prompt), timeout_s=args.timeout, alive=alive)
        check_run(rerun, train_id, args.steps + 1, args.steps + 2, problems, sample_ids=[])
        job2 = client.get(f"/lumina2t/history?node={train_id}")["job"] or {}
        check_lora(job2.get("lora"), args.steps + 2, problems)
        return {**out, "resumed_from": run_folder, "resumed_lora": job2.get("lora"),
                "resumed_steps": (job2.get("steps") or [{}])[-1].get("step"), "problems": problems}
    finally:
        ws.close()


def _counts(run) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in run.events:
        out[e.get("type", "?")] = out.get(e.get("type", "?"), 0) + 1
    return out


def run(args: argparse.Namespace) -> int:
    base = Path(args.workdir).expanduser().resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="lumina2t-e2e-"))
    try:
        result = run_e2e(args, base)
    except ServerError as e:
        result = {"ok": False, "lora": None, "steps": 0, "problems": [str(e)]}
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    for problem in result["problems"]:
        log.error("problem: %s", problem)
    log.info("comfy-e2e %s in %s s: LoRA %s after %s steps", "passed" if result["ok"] else "FAILED",
             result.get("seconds"), result.get("lora"), result.get("steps"))
    if args.json:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0 if result["ok"] else 1
