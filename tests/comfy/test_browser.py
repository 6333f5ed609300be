"""The training experience in ComfyUI's own browser UI: headless Chromium (the system's), driven by Playwright,
against a real ComfyUI server with this pack and the tiny models (a separate process, as `comfy-e2e` starts it).

It opens the UI, loads the example training workflow (served by the server's template route, tiny models
substituted), presses Run and checks that the Train node's chart receives points, its step counter advances and
a validation preview appears on the node; the finished run stays in the saved workflow and is redrawn when that
workflow is opened again. A second run is followed across a page reload (the chart catches up from
/lumina2t/history) and stopped with the Cancel button: the run stops and the status line names the resumable
checkpoint. The template browser lists the example workflows under the pack's name, and the node's Info panel
shows its help page (web/docs). Screenshots go to the test's folder (and to $LUMINA2T_SCREENSHOTS when set, for
docs/img; $LUMINA2T_BROWSER_STEPS sets the first run's steps, 4 by default).

Which frontend: the one the ComfyUI tree pins (installed by its requirements), or the `static` folder of another
`comfyui-frontend-package` given as $LUMINA2T_FRONTEND_ROOT (passed as --front-end-root); with
$LUMINA2T_FRONTEND_VERSION set, the page must report that version. Both node renderers run where the frontend has
two that render DOM widgets (LiteGraph's canvas and the Vue nodes): the template browser, the help page and the
chart on both; the training run on each renderer named in $LUMINA2T_BROWSER_RUNS (default: both). .ci/run runs
every frontend of tests/requirements-frontends.txt and the ComfyUI trees' own pins.

Skips with the reason when there is no ComfyUI (COMFYUI_PATH), no Chromium or no Playwright. About 3-5 minutes
on 2 CPU cores:
    eval "$(/work/shared/tools/comfyui_local.sh env)"
    $COMFYUI_PYTHON -m pip install playwright      # or the [browser] extra; no `playwright install`
    $COMFYUI_PYTHON -m pytest -m "" tests/comfy/test_browser.py   # marked slow: -m "" selects it
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = [pytest.mark.comfy, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
TRAIN = "Lumina2T_TrainLoRA"
HELP_LINE = "Trains the adapter on the cached dataset"  # web/docs/Lumina2T_TrainLoRA.md, first paragraph
TEMPLATES = ("Train a LoRA and sample with it", "Resume a training run",  # example_workflows/*.json
             "Train a Z-Image LoRA and sample with it")
# The Vue node renderer of frontends before 1.30 was an experimental preview that drew no DOM widget of any pack
# (nor ComfyUI's own text boxes), so the chart cannot appear there; 1.49.6 and 1.58.1 render them.
VUE_MIN = (1, 30)
RENDERERS = ("litegraph", "vue")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.NodeBadge.NodeSourceBadgeMode": "None",
            "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.Workflow.ShowMissingModelsWarning": False, "Comfy.Canvas.SelectionToolbox": True,
            "Comfy.VueNodes.Enabled": False}
CHART = "(id) => {{ const c = app.graph?.getNodeById(id)?.lumina2tChart; return !!c && ({cond}); }}"
STATE = """(id) => { const c = app.graph?.getNodeById(id)?.lumina2tChart; if (!c) return null;
  return {status: c.status, detail: c.detail, points: c.points.length, last: c.points.at(-1)?.step ?? null,
          source: c.source, stats: c.stats.textContent, status_line: c.statusEl.textContent}; }"""
INK = """(id) => { const cv = app.graph.getNodeById(id).lumina2tChart.canvas;
  const d = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
NODE_BOX = """(id) => { const n = app.graph.getNodeById(id), ds = app.canvas.ds;
  const r = app.canvas.canvas.getBoundingClientRect(), title = 30, m = 12;
  return {x: r.left + (n.pos[0] + ds.offset[0]) * ds.scale - m, y: r.top + (n.pos[1] - title + ds.offset[1]) * ds.scale - m,
          width: n.size[0] * ds.scale + 2 * m, height: (n.size[1] + title) * ds.scale + 2 * m}; }"""


def chromium() -> str | None:
    for candidate in (os.environ.get("LUMINA2T_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def ui(comfy_path, tmp_path_factory):
    """A ComfyUI server with the pack and the tiny models, the tiny training workflow, and a headless Chromium."""
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium: install Debian's chromium (or set LUMINA2T_CHROMIUM to a Chrome/Chromium binary)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no Playwright: pip install playwright (the Python "
                                   "package only; the system Chromium is used, no browser download)")
    from lumina2_train.comfyui import e2e as e2e
    from lumina2_train.comfyui.client import ComfyClient

    base = tmp_path_factory.mktemp("browser")
    models = e2e.prepare_base(base)
    port = e2e.free_port()
    frontend = os.environ.get("LUMINA2T_FRONTEND_ROOT", "").strip()
    extra = ("--front-end-root", str(Path(frontend).resolve())) if frontend else ()
    proc, log_path = e2e.start_server(comfy_path, os.environ.get("COMFYUI_PYTHON") or sys.executable, base, port,
                                      extra)
    client = ComfyClient("127.0.0.1", port)
    try:
        e2e.wait_ready(client, proc, log_path, timeout_s=300)
        for key, value in SETTINGS.items():
            client.post(f"/settings/{urllib.parse.quote(key)}", value)
        assert e2e.WORKFLOW[:-5] in client.get("/workflow_templates")[e2e.PACK_NAME]  # the pack's template
        example = client.get(f"/api/workflow_templates/{e2e.PACK_NAME}/{urllib.parse.quote(e2e.WORKFLOW)}")
        steps = int(os.environ.get("LUMINA2T_BROWSER_STEPS", "4"))
        workflow = e2e.tiny_workflow(example, client.get("/object_info", timeout_s=120), models, steps=steps)
        train_id = next(n["id"] for n in workflow["nodes"] if n["type"] == TRAIN)
        with sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(base / "chromium-profile"), executable_path=browser_path, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1500, "height": 1150})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"{e}\n{getattr(e, 'stack', '')}"))
            page.set_default_timeout(120_000)
            yield SimpleNamespace(page=page, client=client, url=f"http://127.0.0.1:{port}/", workflow=workflow,
                                  steps=steps, train_id=train_id, errors=errors, base=base, log=log_path,
                                  pack=e2e.PACK_NAME)
            context.close()
    finally:
        e2e.stop_server(proc)


# ---------------------------------------------------------------- page helpers

def open_ui(ui, renderer: str = "litegraph") -> None:
    """The UI with `renderer` drawing the nodes (the setting is the user's; it is stored on the server)."""
    ui.client.post(f"/settings/{urllib.parse.quote('Comfy.VueNodes.Enabled')}", renderer == "vue")
    ui.page.goto(ui.url, wait_until="domcontentloaded")
    ui.page.wait_for_function("() => window.app?.graph && app.canvas && app.extensions?.some("
                              "e => e.name === 'lumina2t.lossChart')", polling=500)
    enabled = ui.page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')")
    assert enabled == (renderer == "vue"), f"the frontend did not take the {renderer} renderer setting"


def frontend_version(ui) -> tuple[int, ...]:
    text = ui.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def require_renderer(ui, renderer: str) -> None:
    if renderer == "vue" and frontend_version(ui) < VUE_MIN:
        pytest.skip(f"frontend {'.'.join(map(str, frontend_version(ui)))}: its Vue node renderer is an experimental "
                    "preview that draws no DOM widgets (the chart); LiteGraph's renderer is tested")


def chart_shown(ui) -> bool:
    return ui.page.evaluate("""(id) => { const e = app.graph.getNodeById(id)?.lumina2tChart?.root;
      if (!e || !e.isConnected || !e.offsetParent) return false; const r = e.getBoundingClientRect();
      return r.width > 100 && r.height > 100; }""", ui.train_id)


def wait_chart(ui, cond: str, timeout_s: float) -> dict:
    """Wait until the Train node's chart satisfies the JS condition `cond` (over `c`, the chart); its state."""
    try:
        ui.page.wait_for_function(CHART.format(cond=cond), arg=ui.train_id, timeout=timeout_s * 1000, polling=500)
    except Exception as e:
        state = ui.page.evaluate(STATE, ui.train_id)
        raise AssertionError(f"chart never reached `{cond}`: {state}; server log {ui.log}") from e
    return ui.page.evaluate(STATE, ui.train_id)


def step_counter(ui) -> tuple[int, int]:
    text = ui.page.locator("[data-lumina2t=stats]").first.inner_text()
    m = re.search(r"step (\d+)/(\d+)", text)
    assert m, f"no step counter in the chart header: {text!r}"
    return int(m.group(1)), int(m.group(2))


def run_command(ui, command: str) -> None:
    """Run a frontend command, as its button or key does: Comfy.QueuePrompt is the Run button, Comfy.Interrupt the
    'Cancel current run' one. The buttons differ per frontend (1.49.6 has two 'Run' buttons; on 1.58.1 the Cancel
    button never became clickable after a reload, a 120 s timeout); the commands are the same in all of them."""
    ui.page.evaluate("(c) => app.extensionManager.command.execute(c)", command)


def set_widgets(ui, **values) -> None:
    ui.page.evaluate("""([id, values]) => { const n = app.graph.getNodeById(id);
      for (const [k, v] of Object.entries(values)) { const w = n.widgets.find(w => w.name === k); w.value = v;
        w.callback?.(v); } }""", [ui.train_id, values])


def screenshot(ui, name: str, folder: Path, *, clip: bool = True) -> Path:
    """The Train node (centred on the canvas at scale 1), or the whole page with `clip` off, as a PNG in `folder`
    and in $LUMINA2T_SCREENSHOTS (named after the frontend: `<name>.<version>.png`)."""
    if clip:
        ui.page.evaluate("(id) => { app.canvas.ds.scale = 1; app.canvas.centerOnNode(app.graph.getNodeById(id));"
                         " app.canvas.setDirty(true, true); }", ui.train_id)
        ui.page.wait_for_timeout(600)
    box = ui.page.evaluate(NODE_BOX, ui.train_id) if clip else None
    version = ".".join(map(str, frontend_version(ui))) or "unknown"
    path = folder / f"{name}.{version}.png"
    ui.page.screenshot(path=str(path), clip=box)
    extra = os.environ.get("LUMINA2T_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


# ---------------------------------------------------------------- the tests

def test_the_page_runs_the_expected_frontend(ui):
    open_ui(ui)
    served = ui.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")
    print(f"frontend {served}")  # shown by .ci/run's -rA summary
    expected = os.environ.get("LUMINA2T_FRONTEND_VERSION", "").strip()
    assert served, "the page reports no frontend version (window.__COMFYUI_FRONTEND_VERSION__)"
    if expected:
        assert served == expected, f"the server served frontend {served}, not {expected}: check --front-end-root"


@pytest.mark.parametrize("renderer", RENDERERS)
def test_the_template_browser_lists_the_example_workflows(ui, renderer):
    page = ui.page
    open_ui(ui, renderer)
    require_renderer(ui, renderer)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text(ui.pack, exact=True).last.click()  # the pack's own section of the browser
    for title in TEMPLATES:
        page.get_by_text(title, exact=True).first.wait_for(state="visible", timeout=30_000)
    page.keyboard.press("Escape")


@pytest.mark.parametrize("renderer", RENDERERS)
def test_the_train_node_shows_its_help_page_and_its_chart(ui, renderer):
    page = ui.page
    open_ui(ui, renderer)
    require_renderer(ui, renderer)
    page.evaluate("(wf) => app.loadGraphData(wf)", ui.workflow)
    wait_chart(ui, "c.status === 'idle'", 30)
    page.wait_for_function("(id) => { const e = app.graph.getNodeById(id)?.lumina2tChart?.root; return e && "
                           "e.isConnected && e.getBoundingClientRect().height > 100; }", arg=ui.train_id,
                           timeout=30_000, polling=500)
    assert chart_shown(ui), f"the chart is not drawn on the Train node with the {renderer} renderer"
    page.evaluate("(id) => { app.canvas.deselectAll?.(); app.canvas.selectNode(app.graph.getNodeById(id)); "
                  "app.canvas.setDirty(true, true); }", ui.train_id)
    # the selection toolbox's Info button: [1.27] data-testid info-button (an svg icon) [newer] aria-label Node Info
    info = page.locator("button[aria-label='Node Info'], .selection-toolbox [data-testid='info-button'], "
                        ".selection-toolbox button:has(i[class*='info'])")
    info.first.click(timeout=30_000)  # the selection toolbox's Info button opens the node's help
    page.get_by_text(HELP_LINE).first.wait_for(state="visible", timeout=30_000)
    screenshot(ui, f"help_{renderer}", ui.base, clip=False)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_chart_follows_a_run_shows_previews_and_is_kept_in_the_workflow(ui, renderer, tmp_path):
    runs = os.environ.get("LUMINA2T_BROWSER_RUNS", ",".join(RENDERERS)).split(",")
    if renderer not in runs:
        pytest.skip(f"a training run under the {renderer} renderer is not asked for here (LUMINA2T_BROWSER_RUNS="
                    f"{','.join(runs)}; .ci/run asks for it on the newest frontend)")
    page = ui.page
    open_ui(ui, renderer)
    require_renderer(ui, renderer)
    page.evaluate("(wf) => app.loadGraphData(wf)", ui.workflow)
    wait_chart(ui, "c.status === 'idle'", 30)
    set_widgets(ui, lora_name=f"browser/{renderer}")  # a new input: ComfyUI would reuse a cached run's outputs
    started = time.monotonic()
    run_command(ui, "Comfy.QueuePrompt")

    state = wait_chart(ui, "c.points.length >= 1", 300)
    first = step_counter(ui)
    assert first[1] == ui.steps and first[0] >= 1 and state["points"] >= 1
    state = wait_chart(ui, f"c.points.at(-1).step > {first[0]}", 180)
    assert step_counter(ui)[0] > first[0] and state["points"] >= 2  # the counter advances
    assert page.evaluate(INK, ui.train_id) > 500  # the lines were drawn on the canvas
    page.wait_for_function("(id) => (app.nodePreviewImages?.[String(id)] || []).length > 0", arg=ui.train_id,
                           timeout=120_000, polling=500)  # a validation sample, as ComfyUI's progress preview
    wait_chart(ui, f"c.points.length >= {max(2, ui.steps // 2)}", 600)
    mid = screenshot(ui, f"train_node_mid_run_{renderer}", tmp_path)

    state = wait_chart(ui, "c.status === 'done'", 420 + 60 * ui.steps)
    assert state["points"] == ui.steps and state["last"] == ui.steps and "LoRA:" in state["detail"]
    page.wait_for_function("(id) => (app.nodeOutputs?.[String(id)]?.images || []).length > 0", arg=ui.train_id,
                           timeout=60_000, polling=500)  # the final samples shown on the node
    done = screenshot(ui, f"train_node_done_{renderer}", tmp_path)
    assert mid.stat().st_size > 10_000 and done.stat().st_size > 10_000

    saved = page.evaluate("() => app.graph.serialize()")
    history = next(n for n in saved["nodes"] if n["id"] == ui.train_id)["properties"]["lumina2t_history"]
    assert history["step"] == list(range(1, ui.steps + 1)) and history["status"] == "done" and history["prompt_id"]
    (ui.base / "saved_workflow.json").write_text(json.dumps(saved))
    page.evaluate("() => { app.canvas.ds.scale = 0.5; app.canvas.setDirty(true, true); }")
    for view in ("σ", "log"):  # the second view and the log scale draw too
        page.locator("[data-lumina2t=chart] button", has_text=view).first.click()
        assert page.evaluate(INK, ui.train_id) > 200
    assert not [e for e in ui.errors if "lumina2t" in e or "chart" in e], ui.errors
    assert time.monotonic() - started < 600 + 60 * ui.steps


def test_reload_catches_up_cancel_stops_and_the_saved_run_redraws(ui, tmp_path):
    page = ui.page
    saved_path = ui.base / "saved_workflow.json"
    if not saved_path.is_file():
        pytest.skip("needs the first test's finished run")
    open_ui(ui)  # LiteGraph's renderer, which every frontend has
    page.evaluate("(wf) => app.loadGraphData(wf)", json.loads(saved_path.read_text()))
    wait_chart(ui, "c.status === 'done'", 30)
    set_widgets(ui, steps=40, lora_name="browser/cancelled")
    run_command(ui, "Comfy.QueuePrompt")
    before = wait_chart(ui, "c.status !== 'done' && c.points.length >= 2", 300)

    page.reload(wait_until="domcontentloaded")  # the workflow comes back from the browser's storage
    page.wait_for_function("() => window.app?.graph && app.canvas", polling=500)
    after = wait_chart(ui, f"c.source === 'history' && c.points.length >= {before['points']}", 60)
    assert after["status"] not in ("done", "cancelled", "failed")
    caught_up = wait_chart(ui, f"c.points.at(-1).step > {after['last']}", 180)  # live events after the reload
    assert caught_up["points"] > before["points"]

    run_command(ui, "Comfy.Interrupt")
    stopped = wait_chart(ui, "c.status === 'cancelled' && c.detail.includes('resumable checkpoint')", 120)
    assert "resume_from" in stopped["detail"] and "step_" in stopped["detail"]
    job = ui.client.get(f"/lumina2t/history?node={ui.train_id}")["job"]
    assert job["status"] == "cancelled" and job["steps"][-1]["step"] < 40
    page.wait_for_timeout(3000)
    assert page.evaluate(STATE, ui.train_id)["last"] == job["steps"][-1]["step"]  # no step after the cancel
    assert ui.client.get("/queue")["queue_running"] == []
    screenshot(ui, "train_node_cancelled", tmp_path)

    page.evaluate("(wf) => app.loadGraphData(wf)", json.loads(saved_path.read_text()))  # the finished workflow
    reopened = wait_chart(ui, f"c.source === 'saved' && c.points.length === {ui.steps}", 30)
    page.wait_for_timeout(1000)  # the history route (now the cancelled run) must not replace it
    reopened = page.evaluate(STATE, ui.train_id)
    assert reopened["status"] == "done" and reopened["points"] == ui.steps and reopened["source"] == "saved"
    assert page.evaluate(INK, ui.train_id) > 200
    assert not [e for e in ui.errors if "lumina2t" in e or "chart" in e], ui.errors
