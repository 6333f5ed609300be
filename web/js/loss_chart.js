// lumina2t.lossChart: the Train nodes' live loss chart and run-status line.
//
// Draws from the `lumina2t.step` websocket payload (StepInfo.as_dict: step, total_steps, loss, lr, sigma,
// samples_per_s, eta_s, memory_gib, ...): raw and smoothed loss per step or mean loss per σ bin, linear or log
// scale, values on hover. The status line follows `lumina2t.status` (loading, compiling, validating, training,
// saving, cancelled with the resumable checkpoint, failed with the error) and shows "caching" while Cache Latents
// & Text runs. After a page reload during a run it catches up from GET /lumina2t/history?node=<id>; a finished
// (or cancelled) run is kept in node.properties.lumina2t_history, so the saved workflow redraws it when opened.
// The widget itself is not serialized: it adds nothing to widgets_values or to the prompt.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import {
  STATUS_COLOURS, TERMINAL, appendPoint, compactHistory, drawSigma, drawSteps, expandHistory, hoverText,
  mergePoints, sigmaBins, statsLine, thin,
} from "./chart_core.js";

const NAME = "lumina2t.lossChart";
const TRAIN_NODES = new Set(["Lumina2T_TrainLoRA", "Lumina2T_TrainLoRAAdvanced"]);
const CACHE_NODES = new Set(["Lumina2T_CacheLatentsText"]);
const REFRESH_AFTER = new Set([...TRAIN_NODES, "Lumina2T_SaveLoRA"]);
const HISTORY_KEY = "lumina2t_history";
const VIEW_KEY = "lumina2t_chart";
const MAX_POINTS = 4000;

function el(tag, css, attrs = {}) {
  const e = document.createElement(tag);
  e.style.cssText = css;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function button(label, title, onClick) {
  const b = el("button", "font:10px monospace;padding:0 5px;margin-left:3px;border-radius:3px;cursor:pointer;" +
    "border:1px solid #555;background:var(--comfy-input-bg, #222);color:var(--input-text, #ddd);",
  { title, type: "button" });
  b.textContent = label;
  b.addEventListener("click", (e) => {
    e.stopPropagation();
    onClick();
  });
  return b;
}

class Chart {
  constructor(node) {
    this.node = node;
    this.points = [];
    this.status = "idle";
    this.detail = "";
    this.source = "none";  // live | history | saved | none: where the points came from
    this.promptId = null;
    this.hover = null;
    this.layout = null;
    const text = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:1px 4px;";
    this.root = el("div", "display:flex;flex-direction:column;width:100%;height:100%;font:11px monospace;" +
      "color:var(--input-text, #ddd);", { "data-lumina2t": "chart" });
    const head = el("div", `display:flex;align-items:center;${text}`);
    this.dot = el("span", "display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:5px;flex:none;");
    this.statusEl = el("span", "flex:1;overflow:hidden;text-overflow:ellipsis;font-weight:bold;",
      { "data-lumina2t": "status" });
    this.logButton = button("log", "Loss axis: linear / log scale", () => this.setView({ log: !this.view.log }));
    this.sigmaButton = button("σ", "View: loss per step / mean loss per σ bin (0 = clean, 1 = noise)",
      () => this.setView({ sigma: !this.view.sigma }));
    head.append(this.dot, this.statusEl, this.logButton, this.sigmaButton);
    this.stats = el("div", text.replace("nowrap", "pre"), { "data-lumina2t": "stats" });
    this.hoverEl = el("div", `${text}opacity:.85;min-height:13px;`, { "data-lumina2t": "hover" });
    this.canvas = el("canvas", "flex:1;width:100%;min-height:90px;background:var(--comfy-input-bg, #222);" +
      "border-radius:4px;", { "data-lumina2t": "canvas" });
    this.detailEl = el("div", "padding:2px 4px;opacity:.85;white-space:pre-wrap;word-break:break-all;" +
      "max-height:6em;overflow:auto;user-select:text;", { "data-lumina2t": "detail" });
    this.root.append(head, this.stats, this.canvas, this.hoverEl, this.detailEl);
    this.canvas.addEventListener("mousemove", (e) => this.onHover(e.offsetX * devicePixelRatio));
    this.canvas.addEventListener("mouseleave", () => this.onHover(null));
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  get view() {
    return { log: false, sigma: false, ...(this.node.properties?.[VIEW_KEY] || {}) };
  }

  setView(change) {
    this.node.properties = this.node.properties || {};
    this.node.properties[VIEW_KEY] = { ...this.view, ...change };
    this.hover = null;
    this.draw();
  }

  reset(promptId) {
    Object.assign(this, { points: [], status: "starting", detail: "", source: "live", hover: null });
    this.promptId = promptId ?? null;
    this.draw();
  }

  add(info) {
    this.points = thin(appendPoint(this.points, info), MAX_POINTS);
    this.source = this.source === "none" || this.source === "saved" ? "live" : this.source;
    this.status = info.status || "training";
    this.detail = "";
    this.draw();
  }

  setStatus(status, detail = "") {
    if (status === "failed" && this.status === "failed" && this.detail && !detail) return;
    this.status = status;
    this.detail = detail || "";
    if (TERMINAL.has(status)) this.save();
    this.draw();
  }

  note(detail) {
    this.detail = detail;
    this.draw();
  }

  /** A job from the history route: a running one replaces what is shown (live points after it are kept). */
  loadJob(job) {
    const live = this.source === "live" ? this.points : [];
    this.points = thin(mergePoints(live, job.steps || []), MAX_POINTS);
    this.source = "history";
    this.promptId = job.prompt_id ?? this.promptId;
    this.status = job.status;
    this.detail = job.detail || (job.status === "cancelled" && job.checkpoint ? `resumable checkpoint: ${job.checkpoint}`
      : job.status === "done" && job.lora ? `LoRA: ${job.lora}` : "");
    this.draw();
  }

  /** The run kept in the workflow (node.properties), drawn when the workflow is opened again. */
  loadSaved(saved) {
    const points = expandHistory(saved);
    if (!points.length && !saved?.status) return;
    Object.assign(this, { points, source: "saved", status: saved.status || "done", detail: saved.detail || "",
      promptId: saved.prompt_id ?? null });
    this.draw();
  }

  save() {
    if (!this.points.length && this.status !== "failed") return;
    this.node.properties = this.node.properties || {};
    this.node.properties[HISTORY_KEY] = compactHistory(this.points, { status: this.status, detail: this.detail,
      prompt_id: this.promptId });
    // let the frontend notice the change, so the (auto-)saved workflow holds the run
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  onHover(px) {
    if (!this.layout || px === null) {
      this.hover = null;
      this.hoverEl.textContent = "";
    } else {
      this.hover = this.layout.index(px);
      const item = this.layout.kind === "sigma" ? this.layout.bins[this.hover] : this.points[this.hover];
      this.hoverEl.textContent = hoverText(this.layout.kind, item, this.layout.smoothed?.[this.hover]);
    }
    this.drawCanvas();
  }

  draw() {
    const shortDetail = this.detail.split("\n")[0];
    this.statusEl.textContent = shortDetail && !TERMINAL.has(this.status) ? `${this.status} · ${shortDetail}`
      : this.status;
    this.dot.style.background = STATUS_COLOURS[this.status] || "#888";
    this.root.dataset.status = this.status;
    this.root.dataset.points = String(this.points.length);
    this.root.dataset.source = this.source;
    this.stats.textContent = statsLine(this.points[this.points.length - 1]);
    this.detailEl.textContent = TERMINAL.has(this.status) ? this.detail : "";
    const { log, sigma } = this.view;
    this.logButton.style.borderColor = log ? "#5aaaff" : "#555";
    this.sigmaButton.style.borderColor = sigma ? "#5aaaff" : "#555";
    this.drawCanvas();
  }

  drawCanvas() {
    const c = this.canvas, dpr = devicePixelRatio || 1;
    const w = Math.max(1, Math.floor(c.clientWidth * dpr)), h = Math.max(1, Math.floor(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) Object.assign(c, { width: w, height: h });
    const ctx = c.getContext("2d");
    const { log, sigma } = this.view;
    const opts = { log, dpr, hover: this.hover };
    this.layout = !this.points.length ? (ctx.clearRect(0, 0, w, h), null)
      : sigma ? drawSigma(ctx, w, h, sigmaBins(this.points), opts) : drawSteps(ctx, w, h, this.points, opts);
  }
}

function nodeOf(nodeId) {
  if (nodeId === null || nodeId === undefined) return null;
  return app.graph?.getNodeById?.(Number(nodeId)) ?? app.graph?.getNodeById?.(nodeId) ?? null;
}

const chartOf = (nodeId) => nodeOf(nodeId)?.lumina2tChart;
let runningPrompt = null;  // from execution_start: `executing` carries only the node id
const charts = () => (app.graph?.nodes ?? app.graph?._nodes ?? []).map((n) => n.lumina2tChart).filter(Boolean);

async function fetchHistory(node) {
  const chart = node.lumina2tChart;
  try {
    const res = await api.fetchApi(`/lumina2t/history?node=${encodeURIComponent(node.id)}`);
    const job = res.ok ? (await res.json()).job : null;
    if (!job || !chart) return;
    const saved = node.properties?.[HISTORY_KEY];
    // a running job is this node's (catch up after a reload); a finished one only when it is the saved run
    if (!TERMINAL.has(job.status) || (saved?.prompt_id && saved.prompt_id === job.prompt_id)) chart.loadJob(job);
  } catch (e) {
    console.debug(`${NAME}: no history for node ${node.id}`, e);
  }
}

function onCacheEvent(nodeId, detail) {
  const node = nodeOf(nodeId);
  if (!node || !CACHE_NODES.has(node.comfyClass ?? node.type)) return;
  for (const chart of charts()) {
    if (chart.status !== "caching") chart.beforeCaching = { status: chart.status, detail: chart.detail };
    chart.setStatus("caching", `${node.title || "Cache Latents & Text"}${detail ? ` ${detail}` : ""}`);
  }
}

function endOfPrompt() {
  for (const chart of charts()) {  // a Train node that did not run after the cache (cached output) shows its old state
    if (chart.status === "caching" && chart.beforeCaching) chart.setStatus(chart.beforeCaching.status,
      chart.beforeCaching.detail);
  }
}

function firstLines(text, n = 3) {
  return String(text || "").trim().split("\n").slice(0, n).join("\n");
}

function setup() {
  api.addEventListener("lumina2t.step", ({ detail }) => chartOf(detail.node)?.add(detail));
  api.addEventListener("lumina2t.status", ({ detail }) => chartOf(detail.node)?.setStatus(detail.status, detail.detail));
  api.addEventListener("lumina2t.checkpoint", ({ detail }) =>
    chartOf(detail.node)?.note(`checkpoint at step ${detail.step}: ${detail.path}`));
  api.addEventListener("lumina2t.validation", ({ detail }) => {
    const chart = chartOf(detail.node);
    const total = chart?.points[chart.points.length - 1]?.total_steps;
    chart?.setStatus(total && detail.step < total ? "training" : "validating",
      `samples at step ${detail.step} (${detail.prompts.length} prompt(s))`);
  });
  api.addEventListener("execution_start", ({ detail }) => {
    runningPrompt = detail?.prompt_id ?? null;
  });
  api.addEventListener("executing", ({ detail }) => {
    const id = typeof detail === "object" && detail !== null ? detail.node : detail;
    chartOf(id)?.reset(detail?.prompt_id ?? runningPrompt);
    onCacheEvent(id, "");
  });
  api.addEventListener("progress", ({ detail }) => onCacheEvent(detail.node, `${detail.value}/${detail.max}`));
  api.addEventListener("executed", ({ detail }) => {
    const node = nodeOf(detail.node);
    if (!node || !REFRESH_AFTER.has(node.comfyClass ?? node.type)) return;
    node.lumina2tChart?.setStatus("done", firstLines((detail.output?.text || [""])[0]));
    app.refreshComboInNodes?.();  // the new LoRA appears in the LoRA loaders' lists
  });
  api.addEventListener("execution_interrupted", ({ detail }) => {
    const chart = chartOf(detail.node_id);
    if (chart && chart.status !== "cancelled") {
      chart.setStatus("cancelled", "");
      setTimeout(() => fetchHistory(chart.node), 300);  // the resumable checkpoint, if the event was missed
    }
    endOfPrompt();
  });
  api.addEventListener("execution_error", ({ detail }) => {
    const chart = chartOf(detail.node_id);  // a failure after training started has its status already
    if (chart && chart.status !== "failed") chart.setStatus("failed", firstLines(detail.exception_message, 6));
    endOfPrompt();
  });
  api.addEventListener("execution_success", endOfPrompt);
}

if (!app.extensions?.some?.((e) => e.name === NAME)) {  // the web folder may be served under two names
  app.registerExtension({
    name: NAME,
    setup,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!TRAIN_NODES.has(nodeData.name)) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        const chart = new Chart(this);
        this.lumina2tChart = chart;
        const widget = this.addDOMWidget("loss_chart", "lumina2t_chart", chart.root, {
          serialize: false, hideOnZoom: false, getMinHeight: () => 240,
        });
        widget.serialize = false;
        chart.draw();
        return r;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const r = onConfigure?.apply(this, arguments);
        this.lumina2tChart?.loadSaved(this.properties?.[HISTORY_KEY]);
        setTimeout(() => fetchHistory(this), 0);  // the id is final once the graph is loaded
        return r;
      };
    },
  });
}
