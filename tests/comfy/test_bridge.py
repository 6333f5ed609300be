"""comfy_hooks against ComfyUI's real progress bar, interrupt flag and PromptServer class."""

import pytest
import torch

from lumina2_train.comfyui.bridge import comfy_hooks, compile_status, preview_grid
from lumina2_train.train import StepInfo, ValidationImages

pytestmark = pytest.mark.comfy


@pytest.fixture
def captured(comfy):
    """(progress calls, sent events) while a stub server and progress hook are installed."""
    progress, events = [], []

    class Server:
        client_id = "cid"

        def send_sync(self, event, data, sid=None):
            events.append((event, data, sid))

    old = getattr(comfy.server.PromptServer, "instance", None)
    comfy.server.PromptServer.instance = Server()
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: progress.append((value, total, preview, node_id)))
    yield progress, events
    comfy.server.PromptServer.instance = old
    comfy.utils.set_progress_bar_global_hook(None)


def _info(step):
    return StepInfo(step=step, total_steps=10, loss=0.5, lr=1e-4, sigma=0.6, samples_per_s=2.0, eta_s=4.0,
                    epoch=0, bucket="64x64")


def test_steps_and_validation_previews_reach_the_progress_bar(captured):
    progress, events = captured
    hooks = comfy_hooks("7", 10)
    hooks.on_step(_info(3))
    hooks.on_validation(ValidationImages(step=3, prompts=("a cat",), images=torch.rand(2, 3, 32, 32)))
    hooks.on_status("validating", "step 3")
    hooks.on_checkpoint("/tmp/run/checkpoints/step_00000003", 3)
    assert progress[0] == (3, 10, None, "7")
    value, total, preview, node = progress[1]
    assert (value, total, node) == (3, 10, "7") and preview[0] == "JPEG" and preview[1].size == (64, 32)
    names = [e for e, _, _ in events]
    assert names == ["lumina2t.step", "lumina2t.validation", "lumina2t.status", "lumina2t.checkpoint"]
    step = events[0][1]
    assert step == {"node": "7", **_info(3).as_dict()} and events[0][2] == "cid"
    assert events[1][1]["prompts"] == ["a cat"] and events[3][1]["path"].endswith("step_00000003")


def test_interrupt_raises_comfyuis_exception_once(comfy):
    hooks = comfy_hooks("7", 10)
    hooks.check_interrupt()  # nothing pending
    comfy.mm.interrupt_current_processing(True)
    with pytest.raises(comfy.mm.InterruptProcessingException):
        hooks.check_interrupt()
    assert not comfy.mm.processing_interrupted()


def test_no_server_running_is_fine(comfy):
    old = getattr(comfy.server.PromptServer, "instance", None)
    comfy.server.PromptServer.instance = None
    try:
        hooks = comfy_hooks("7", 2)
        hooks.on_step(_info(1))
        hooks.on_status("training", "")
    finally:
        comfy.server.PromptServer.instance = old


def test_compile_status_until_the_first_step_on_cuda_only(comfy, monkeypatch):
    from lumina2_train.train import TrainHooks

    seen = []
    hooks = TrainHooks(on_status=lambda s, d: seen.append(s), on_step=lambda info: seen.append(info.step))
    assert compile_status(hooks, True) is hooks  # CPU: train.compile does not apply
    assert compile_status(hooks, False) is hooks
    monkeypatch.setattr(comfy.mm, "get_torch_device", lambda: torch.device("cuda"))
    wrapped = compile_status(hooks, True)
    wrapped.on_status("validating", "step 0")
    wrapped.on_status("training", "step 0/10")
    wrapped.on_step(_info(1))
    wrapped.on_step(_info(2))
    assert seen == ["validating", "compiling", "training", 1, 2]


def test_preview_grid_is_one_image():
    grid = preview_grid(torch.rand(3, 32, 48, 3))  # (N, H, W, 3): 2 x 2 grid
    assert grid.shape == (1, 64, 96, 3) and 0.0 <= float(grid.min()) and float(grid.max()) <= 1.0
    assert preview_grid(None).shape == (1, 64, 64, 3) and float(preview_grid(None).max()) == 0.0
