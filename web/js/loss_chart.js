// lumina2t.lossChart: a live loss chart and run status on the Train nodes.
//
// Draws from the `lumina2t.step` websocket payload (StepInfo.as_dict: step, total_steps, loss, lr, sigma,
// samples_per_s, eta_s, ...), shows `lumina2t.status` / `.checkpoint` / `.validation` as a status line, and after
// a page reload fetches the running (or last) job of the node from GET /lumina2t/history?node=<id>.
// The widget is not serialized: it adds nothing to the workflow's widgets_values or to the prompt.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NAME = "lumina2t.lossChart";
const TRAIN_NODES = new Set(["Lumina2T_TrainLoRA", "Lumina2T_TrainLoRAAdvanced"]);
const REFRESH_AFTER = new Set([...TRAIN_NODES, "Lumina2T_SaveLoRA"]);
const MAX_POINTS = 4000;

function fmt(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Math.abs(v) >= 1e-3 || v === 0 ? Number(v).toFixed(digits) : Number(v).toExponential(2);
}

function eta(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}`
    : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}` : `${s}s`;
}

function smooth(values, beta = 0.9) {
  const out = [];
  let avg = 0;
  values.forEach((v, i) => {
    avg = beta * avg + (1 - beta) * v;
    out.push(avg / (1 - beta ** (i + 1)));
  });
  return out;
}

class Chart {
  constructor(node) {
    this.node = node;
    this.points = [];
    this.status = "idle";
    this.detail = "";
    this.root = document.createElement("div");
    this.root.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;font:11px monospace;" +
      "color:var(--input-text, #ddd);";
    this.header = document.createElement("div");
    this.header.style.cssText = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:2px 4px;";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "flex:1;width:100%;min-height:100px;background:var(--comfy-input-bg, #222);" +
      "border-radius:4px;";
    this.footer = document.createElement("div");
    this.footer.style.cssText = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:2px 4px;opacity:.8;";
    this.root.append(this.header, this.canvas, this.footer);
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  reset() {
    this.points = [];
    this.status = "starting";
    this.detail = "";
    this.draw();
  }

  add(info) {
    const last = this.points[this.points.length - 1];
    if (last && info.step <= last.step) this.points = this.points.filter((p) => p.step < info.step);
    this.points.push(info);
    if (this.points.length > MAX_POINTS) {
      const half = Math.floor(this.points.length / 2);
      this.points = this.points.slice(0, half).filter((_, i) => i % 2 === 0).concat(this.points.slice(half));
    }
    this.status = info.status || "training";
    this.draw();
  }

  setStatus(status, detail) {
    this.status = status;
    this.detail = detail || "";
    this.draw();
  }

  load(job) {
    if (!job) return;
    this.points = (job.steps || []).slice();
    this.status = job.status;
    this.detail = job.status === "cancelled" && job.checkpoint ? `resumable checkpoint: ${job.checkpoint}`
      : job.lora ? `LoRA: ${job.lora}` : job.detail || "";
    this.draw();
  }

  draw() {
    const p = this.points[this.points.length - 1];
    this.header.textContent = p
      ? `${this.status} · step ${p.step}/${p.total_steps} · loss ${fmt(p.loss)} · lr ${fmt(p.lr, 6)} · σ ${fmt(p.sigma, 3)}` +
        ` · ${fmt(p.samples_per_s, 2)} samples/s · ETA ${eta(p.eta_s)}`
      : `${this.status}`;
    this.footer.textContent = this.detail;
    const c = this.canvas;
    const w = Math.max(1, Math.floor(c.clientWidth * devicePixelRatio));
    const h = Math.max(1, Math.floor(c.clientHeight * devicePixelRatio));
    if (c.width !== w || c.height !== h) Object.assign(c, { width: w, height: h });
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const losses = this.points.map((q) => q.loss).filter((v) => v !== null && Number.isFinite(v));
    if (losses.length < 1) return;
    const pad = 6 * devicePixelRatio;
    const lo = Math.min(...losses), hi = Math.max(...losses);
    const span = hi > lo ? hi - lo : 1e-6;
    const steps = this.points.map((q) => q.step);
    const s0 = Math.min(...steps), s1 = Math.max(Math.max(...steps), s0 + 1);
    const x = (s) => pad + ((w - 2 * pad) * (s - s0)) / (s1 - s0);
    const y = (v) => h - pad - ((h - 2 * pad) * (v - lo)) / span;
    const line = (values, colour, width) => {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width * devicePixelRatio;
      ctx.beginPath();
      values.forEach((v, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(this.points[i].step), y(v)));
      ctx.stroke();
    };
    const finite = this.points.every((q) => q.loss !== null && Number.isFinite(q.loss));
    if (finite) {
      line(losses, "rgba(120,160,220,0.55)", 1);
      line(smooth(losses), "rgb(90,170,255)", 2);
    }
    ctx.fillStyle = "rgba(200,200,200,0.8)";
    ctx.font = `${10 * devicePixelRatio}px monospace`;
    ctx.fillText(fmt(hi), pad, pad + 10 * devicePixelRatio);
    ctx.fillText(fmt(lo), pad, h - pad);
  }
}

function chartOf(nodeId) {
  const node = app.graph?.getNodeById?.(Number(nodeId)) ?? app.graph?.getNodeById?.(nodeId);
  return node?.lumina2tChart;
}

async function fetchHistory(node) {
  try {
    const res = await api.fetchApi(`/lumina2t/history?node=${encodeURIComponent(node.id)}`);
    if (res.ok) node.lumina2tChart?.load((await res.json()).job);
  } catch (e) {
    console.debug(`${NAME}: no history for node ${node.id}`, e);
  }
}

if (!app.extensions?.some?.((e) => e.name === NAME)) {  // the web folder may be served under two names
  app.registerExtension({
    name: NAME,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!TRAIN_NODES.has(nodeData.name)) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        const chart = new Chart(this);
        this.lumina2tChart = chart;
        const widget = this.addDOMWidget("loss_chart", "lumina2t_chart", chart.root, {
          serialize: false, hideOnZoom: false, getMinHeight: () => 160,
        });
        widget.serialize = false;
        chart.draw();
        setTimeout(() => fetchHistory(this), 0);  // the id is final once the graph is loaded
        return r;
      };
    },
    setup() {
      api.addEventListener("lumina2t.step", ({ detail }) => chartOf(detail.node)?.add(detail));
      api.addEventListener("lumina2t.status", ({ detail }) => chartOf(detail.node)?.setStatus(detail.status, detail.detail));
      api.addEventListener("lumina2t.checkpoint", ({ detail }) =>
        chartOf(detail.node)?.setStatus("checkpoint", `step ${detail.step}: ${detail.path}`));
      api.addEventListener("lumina2t.validation", ({ detail }) =>
        chartOf(detail.node)?.setStatus("validated", `step ${detail.step}: ${detail.prompts.length} sample(s)`));
      api.addEventListener("executing", ({ detail }) => {
        const id = typeof detail === "object" && detail !== null ? detail.node : detail;
        const chart = id !== null && id !== undefined ? chartOf(id) : null;
        if (chart) chart.reset();
      });
      api.addEventListener("executed", ({ detail }) => {
        const node = app.graph?.getNodeById?.(Number(detail.node));
        if (!node || !REFRESH_AFTER.has(node.comfyClass ?? node.type)) return;
        node.lumina2tChart?.setStatus("done", (detail.output?.text || [""])[0].split("\n").slice(0, 2).join(" · "));
        app.refreshComboInNodes?.();  // the new LoRA appears in the LoRA loaders' lists
      });
      api.addEventListener("execution_interrupted", ({ detail }) => {
        const chart = chartOf(detail.node_id);
        if (chart) setTimeout(() => fetchHistory(chart.node), 300);  // shows the resumable checkpoint
      });
    },
  });
}
