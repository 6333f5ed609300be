"""`python -m lumina2_train comfy-e2e` against the real ComfyUI: a server in its own process, the example workflow
over HTTP and the websocket, a resumed second run (docs/e2e.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.comfy, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_comfy_e2e_trains_the_example_workflow_over_http(comfy, tmp_path):
    root = comfy.root
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    cmd = [sys.executable, "-m", "lumina2_train", "comfy-e2e", "--comfyui", str(root), "--python", python,
           "--workdir", str(tmp_path / "e2e"), "--steps", "3", "--json"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"], (result["problems"], done.stderr[-3000:])
    assert done.returncode == 0
    assert result["steps"] == 3 and result["resumed_steps"] == 5
    assert result["lora"].endswith("lumina2_tiny.safetensors") and result["resumed_lora"].endswith("_2.safetensors")
    assert result["events"]["lumina2t.step"] == 3 and result["events"]["lumina2t.checkpoint"] >= 1
