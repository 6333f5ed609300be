// Pure helpers of the Train node's loss chart (lumina2t.lossChart): formatting, smoothing, σ bins, the history
// kept in the workflow, and drawing on any 2D context. No DOM, no ComfyUI import: tests/js/ runs them in Node.
// A point is one `lumina2t.step` payload (StepInfo.as_dict: step, total_steps, loss, lr, sigma, samples_per_s,
// eta_s, memory_gib, ...); only what is drawn or shown is kept in the workflow.

export const TERMINAL = new Set(["done", "cancelled", "failed"]);
export const SIGMA_BINS = 10;
export const SAVED_POINTS = 400;  // points kept in the workflow (node.properties): about 10 KB
export const COLOURS = {
  raw: "rgba(120,160,220,0.45)", smooth: "rgb(90,170,255)", bar: "rgba(90,170,255,0.55)", grid: "rgba(200,200,200,0.12)",
  text: "rgba(210,210,210,0.85)", hover: "rgba(255,210,90,0.9)",
};
export const STATUS_COLOURS = {
  idle: "#888", starting: "#aaa", loading: "#c9b458", caching: "#c9b458", compiling: "#c9b458", training: "#5aaaff",
  validating: "#b48cff", validated: "#b48cff", checkpoint: "#4fc1b0", saving: "#4fc1b0", done: "#5cc46a",
  cancelled: "#f0a040", failed: "#ff5c5c",
};

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

export function fmt(v, digits = 4) {
  if (!isNum(v)) return "–";
  return Math.abs(v) >= 1e-3 || v === 0 ? v.toFixed(digits) : v.toExponential(2);
}

export function fmtEta(seconds) {
  if (!isNum(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** Bias-corrected exponential moving average; a non-finite value repeats the previous average. */
export function smooth(values, beta = smoothingFor(values.length)) {
  const out = [];
  let avg = 0, n = 0;
  for (const v of values) {
    if (isNum(v)) {
      avg = beta * avg + (1 - beta) * v;
      n += 1;
    }
    out.push(n ? avg / (1 - beta ** n) : null);
  }
  return out;
}

/** Heavier smoothing for longer runs: about the last 5 % of the steps. */
export function smoothingFor(n) {
  return Math.min(0.98, Math.max(0.6, 1 - 20 / Math.max(n, 1)));
}

/** Mean loss per σ bin (σ in [0, 1], 0 = clean): [{lo, hi, count, mean}], `n` bins. */
export function sigmaBins(points, n = SIGMA_BINS) {
  const bins = Array.from({ length: n }, (_, i) => ({ lo: i / n, hi: (i + 1) / n, count: 0, mean: null, sum: 0 }));
  for (const p of points) {
    if (!isNum(p.sigma) || !isNum(p.loss)) continue;
    const b = bins[Math.min(n - 1, Math.max(0, Math.floor(p.sigma * n)))];
    b.count += 1;
    b.sum += p.loss;
  }
  return bins.map(({ sum, ...b }) => ({ ...b, mean: b.count ? sum / b.count : null }));
}

/** The two header lines: step / total, loss and lr; samples/s, ETA and memory of the newest point. */
export function statsLine(p) {
  if (!p) return "no steps yet";
  const mem = isNum(p.memory_gib) && p.memory_gib > 0 ? `${p.memory_gib.toFixed(2)} GiB` : "–";
  return `step ${p.step}/${p.total_steps ?? "?"} · loss ${fmt(p.loss)} · lr ${fmt(p.lr, 6)}\n` +
    `${fmt(p.samples_per_s, 2)} samples/s · ETA ${fmtEta(p.eta_s)} · mem ${mem}`;
}

/** Add one step's point: a step number at or below the last one (a run resumed from an earlier checkpoint)
 * drops the points from there on. */
export function appendPoint(points, info) {
  const last = points[points.length - 1];
  return (last && info.step <= last.step ? points.filter((p) => p.step < info.step) : points.slice()).concat([info]);
}

/** Points fetched from the history route, followed by the live points received after them (the catch-up after
 * a page reload may cross live events). */
export function mergePoints(live, fetched) {
  if (!fetched.length) return live.slice();
  const last = fetched[fetched.length - 1].step;
  return fetched.concat(live.filter((p) => p.step > last));
}

/** Keep at most `max` points: every other point of the older half until it fits (the recent curve stays exact). */
export function thin(points, max) {
  let out = points;
  while (out.length > max) {
    const half = Math.floor(out.length / 2);
    out = out.slice(0, half).filter((_, i) => i % 2 === 0).concat(out.slice(half));
  }
  return out;
}

/** What the workflow keeps of a run (node.properties): columns of the drawn fields plus the newest full point. */
export function compactHistory(points, extra = {}, max = SAVED_POINTS) {
  const kept = thin(points, max);
  const round = (v) => (isNum(v) ? Number(v.toPrecision(5)) : null);
  return {
    version: 1, ...extra,
    step: kept.map((p) => p.step), loss: kept.map((p) => round(p.loss)), sigma: kept.map((p) => round(p.sigma)),
    last: points.length ? points[points.length - 1] : null,
  };
}

/** Points back from compactHistory's result (an unknown or broken value gives none). */
export function expandHistory(saved) {
  if (!saved || saved.version !== 1 || !Array.isArray(saved.step)) return [];
  const total = saved.last?.total_steps;
  const points = saved.step.map((step, i) => ({ step, loss: saved.loss?.[i] ?? null, sigma: saved.sigma?.[i] ?? null,
    total_steps: total }));
  if (saved.last && points.length && points[points.length - 1].step === saved.last.step) points[points.length - 1] =
    saved.last;
  return points;
}

/** Value range for the y axis: [lo, hi] of finite values (positive ones on a log scale), never empty. */
export function valueRange(values, log = false) {
  const ok = values.filter((v) => isNum(v) && (!log || v > 0));
  if (!ok.length) return null;
  let lo = Math.min(...ok), hi = Math.max(...ok);
  if (log) [lo, hi] = [Math.log10(lo), Math.log10(hi)];
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5 * (Math.abs(lo) || 1) * 0.1, hi + 0.5 * (Math.abs(hi) || 1) * 0.1];
  return [lo, hi];
}

function frame(w, h, dpr) {
  const pad = { left: 44 * dpr, right: 8 * dpr, top: 8 * dpr, bottom: 16 * dpr };
  return { ...pad, width: Math.max(1, w - pad.left - pad.right), height: Math.max(1, h - pad.top - pad.bottom) };
}

function axes(ctx, f, h, range, log, dpr, xLabels) {
  const [lo, hi] = range;
  const unlog = (v) => (log ? 10 ** v : v);
  ctx.font = `${10 * dpr}px monospace`;
  ctx.lineWidth = 1 * dpr;
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, y = f.top + f.height - (f.height * i) / 4;
    ctx.strokeStyle = COLOURS.grid;
    ctx.beginPath();
    ctx.moveTo(f.left, y);
    ctx.lineTo(f.left + f.width, y);
    ctx.stroke();
    ctx.fillStyle = COLOURS.text;
    ctx.fillText(fmt(unlog(v), 3), 2 * dpr, y + 3 * dpr);
  }
  ctx.fillText(xLabels[0], f.left, h - 3 * dpr);
  const right = xLabels[1];
  ctx.fillText(right, f.left + f.width - ctx.measureText(right).width, h - 3 * dpr);
}

function polyline(ctx, xs, ys, colour, width) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.beginPath();
  let pen = false;
  xs.forEach((x, i) => {
    if (ys[i] === null) {
      pen = false;
      return;
    }
    if (pen) ctx.lineTo(x, ys[i]);
    else ctx.moveTo(x, ys[i]);
    pen = true;
  });
  ctx.stroke();
}

/** Loss per step: raw (thin) and smoothed (thick). Returns what hover needs: {kind, index(px)} or null. */
export function drawSteps(ctx, w, h, points, { log = false, dpr = 1, hover = null } = {}) {
  ctx.clearRect(0, 0, w, h);
  const losses = points.map((p) => p.loss);
  const smoothed = smooth(losses);
  const range = valueRange(losses.concat(smoothed), log);
  if (!range) return null;
  const f = frame(w, h, dpr);
  const s0 = points[0].step, s1 = Math.max(points[points.length - 1].step, s0 + 1);
  const x = (s) => f.left + (f.width * (s - s0)) / (s1 - s0);
  const y = (v) => (!isNum(v) || (log && v <= 0) ? null
    : f.top + f.height - (f.height * ((log ? Math.log10(v) : v) - range[0])) / (range[1] - range[0]));
  axes(ctx, f, h, range, log, dpr, [String(s0), String(s1)]);
  const xs = points.map((p) => x(p.step));
  polyline(ctx, xs, losses.map(y), COLOURS.raw, 1 * dpr);
  polyline(ctx, xs, smoothed.map(y), COLOURS.smooth, 2 * dpr);
  if (hover !== null && hover >= 0 && hover < points.length) {
    ctx.strokeStyle = COLOURS.hover;
    ctx.lineWidth = 1 * dpr;
    ctx.beginPath();
    ctx.moveTo(xs[hover], f.top);
    ctx.lineTo(xs[hover], f.top + f.height);
    ctx.stroke();
  }
  return {
    kind: "steps", smoothed,
    index(px) {
      let best = -1, dist = Infinity;
      xs.forEach((xi, i) => {
        if (Math.abs(xi - px) < dist) [best, dist] = [i, Math.abs(xi - px)];
      });
      return best;
    },
  };
}

/** Mean loss per σ bin as bars (σ from 0, clean, to 1, noise). Returns {kind, bins, index(px)}. */
export function drawSigma(ctx, w, h, bins, { log = false, dpr = 1, hover = null } = {}) {
  ctx.clearRect(0, 0, w, h);
  const range = valueRange(bins.map((b) => b.mean), log);
  if (!range) return null;
  const f = frame(w, h, dpr);
  const base = log ? range[0] - 0.05 * (range[1] - range[0]) : Math.min(0, range[0]);
  const lo = Math.min(base, range[0]);
  axes(ctx, f, h, [lo, range[1]], log, dpr, ["σ 0", "σ 1"]);
  const bw = f.width / bins.length;
  bins.forEach((b, i) => {
    if (b.mean === null || (log && b.mean <= 0)) return;
    const v = log ? Math.log10(b.mean) : b.mean;
    const top = f.top + f.height - (f.height * (v - lo)) / (range[1] - lo);
    ctx.fillStyle = i === hover ? COLOURS.hover : COLOURS.bar;
    ctx.fillRect(f.left + i * bw + 1 * dpr, top, bw - 2 * dpr, f.top + f.height - top);
  });
  return { kind: "sigma", bins, index: (px) => Math.min(bins.length - 1, Math.max(0, Math.floor((px - f.left) / bw))) };
}

/** Tooltip text of a hovered point or bin. */
export function hoverText(kind, item, smoothed) {
  if (!item) return "";
  if (kind === "sigma") {
    return `σ ${item.lo.toFixed(1)}–${item.hi.toFixed(1)}: mean loss ${fmt(item.mean)} over ${item.count} step(s)`;
  }
  return `step ${item.step}: loss ${fmt(item.loss)} · smoothed ${fmt(smoothed)} · σ ${fmt(item.sigma, 3)}`;
}
