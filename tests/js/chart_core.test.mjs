// Node's test runner over the Train node chart's pure helpers (web/js/chart_core.js): no browser, no ComfyUI.
//   node --test tests/js/
// (tests/test_comfy_side_pure.py runs it in the CPU suite when node is installed.)
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  SAVED_POINTS, appendPoint, compactHistory, drawSigma, drawSteps, expandHistory, fmt, fmtEta, hoverText,
  mergePoints, sigmaBins, smooth, statsLine, thin, valueRange,
} from "../../web/js/chart_core.js";

const point = (step, loss = 1 / step, sigma = (step % 10) / 10 + 0.05) => ({
  step, total_steps: 100, loss, lr: 1e-4, sigma, samples_per_s: 2.5, eta_s: 90, memory_gib: 0, status: "training",
});

/** A 2D context that records what is drawn. */
function recorder() {
  const calls = [];
  const ctx = new Proxy({ calls }, {
    get(target, name) {
      if (name in target) return target[name];
      if (name === "measureText") return (t) => ({ width: t.length * 6 });
      return (...args) => calls.push([name, ...args]);
    },
    set(target, name, value) {
      calls.push([`=${String(name)}`, value]);
      return true;
    },
  });
  return ctx;
}

test("formatting", () => {
  assert.equal(fmt(0.12345), "0.1235");
  assert.equal(fmt(0.00001234), "1.23e-5");
  assert.equal(fmt(null), "–");
  assert.equal(fmt(NaN), "–");
  assert.equal(fmtEta(42), "42s");
  assert.equal(fmtEta(125), "2m05s");
  assert.equal(fmtEta(3 * 3600 + 60 * 7), "3h07m");
  assert.equal(fmtEta(null), "–");
  const line = statsLine(point(3));
  assert.match(line, /^step 3\/100 · loss 0\.3333/);
  assert.match(line, /2\.50 samples\/s · ETA 1m30s · mem –$/);
  assert.match(statsLine({ ...point(3), memory_gib: 12.3456 }), /mem 12\.35 GiB/);
});

test("smoothing is a bias-corrected moving average that skips gaps", () => {
  assert.deepEqual(smooth([2, 2, 2], 0.9).map((v) => Number(v.toFixed(9))), [2, 2, 2]);
  const s = smooth([1, null, 3], 0.5);
  assert.equal(s[0], 1);
  assert.equal(s[1], 1);  // a gap repeats the average
  assert.ok(s[2] > 1 && s[2] < 3);
  assert.deepEqual(smooth([null]), [null]);
});

test("σ bins average the loss of the steps whose σ falls in them", () => {
  const bins = sigmaBins([{ sigma: 0.05, loss: 1 }, { sigma: 0.07, loss: 3 }, { sigma: 1.0, loss: 5 },
    { sigma: null, loss: 9 }], 10);
  assert.equal(bins.length, 10);
  assert.deepEqual([bins[0].count, bins[0].mean], [2, 2]);
  assert.deepEqual([bins[9].count, bins[9].mean], [1, 5]);  // σ = 1 goes to the last bin
  assert.equal(bins[5].mean, null);
});

test("points: append, resume from an earlier step, catch up after a reload, thin", () => {
  let pts = [];
  for (let s = 1; s <= 5; s++) pts = appendPoint(pts, point(s));
  assert.deepEqual(pts.map((p) => p.step), [1, 2, 3, 4, 5]);
  assert.deepEqual(appendPoint(pts, point(3)).map((p) => p.step), [1, 2, 3]);  // resumed from step 2
  const live = [point(7), point(8)];
  assert.deepEqual(mergePoints(live, [point(1), point(2), point(7)]).map((p) => p.step), [1, 2, 7, 8]);
  assert.deepEqual(mergePoints(live, []).map((p) => p.step), [7, 8]);
  const many = Array.from({ length: 1000 }, (_, i) => point(i + 1));
  const kept = thin(many, 300);
  assert.ok(kept.length <= 300);
  assert.deepEqual(kept.slice(-50), many.slice(-50));  // the recent curve stays exact
});

test("the history kept in the workflow round-trips and stays small", () => {
  const pts = Array.from({ length: 5000 }, (_, i) => point(i + 1, 1 / (i + 1) + 1e-9));
  const saved = compactHistory(pts, { status: "done", prompt_id: "p1" });
  assert.ok(saved.step.length <= SAVED_POINTS);
  assert.ok(JSON.stringify(saved).length < 16_000);
  assert.equal(saved.status, "done");
  const back = expandHistory(JSON.parse(JSON.stringify(saved)));
  assert.equal(back.length, saved.step.length);
  assert.deepEqual(back.at(-1), pts.at(-1));  // the newest point in full (the header line)
  assert.equal(back[0].total_steps, 100);
  assert.deepEqual(expandHistory(null), []);
  assert.deepEqual(expandHistory({ version: 99 }), []);
});

test("value ranges: log scale keeps positive values only", () => {
  assert.deepEqual(valueRange([1, 10, 100], true), [0, 2]);
  assert.deepEqual(valueRange([0.5, 2], false), [0.5, 2]);
  assert.equal(valueRange([0, -1], true), null);
  const [lo, hi] = valueRange([3, 3]);
  assert.ok(lo < 3 && hi > 3);  // never an empty range
});

test("drawing the steps view: raw and smoothed lines, hover index", () => {
  const ctx = recorder();
  const pts = Array.from({ length: 20 }, (_, i) => point(i + 1));
  const layout = drawSteps(ctx, 400, 200, pts, { dpr: 1, hover: 5 });
  const strokes = ctx.calls.filter(([n]) => n === "stroke").length;
  assert.ok(strokes >= 2 + 5 + 1);  // two lines, the grid, the hover marker
  const lines = ctx.calls.filter(([n]) => n === "lineTo");
  assert.ok(lines.length >= 2 * 19);
  for (const [, x, y] of lines) assert.ok(x >= 0 && x <= 400 && y >= 0 && y <= 200, `${x},${y} outside`);
  assert.equal(layout.kind, "steps");
  assert.equal(layout.index(44), 0);
  assert.equal(layout.index(392), 19);
  assert.match(hoverText("steps", pts[3], layout.smoothed[3]), /^step 4: loss 0\.2500 · smoothed/);
  assert.equal(drawSteps(recorder(), 400, 200, [{ step: 1, loss: null }], {}), null);
});

test("drawing the log scale skips non-positive losses, the σ view draws bars", () => {
  const ctx = recorder();
  drawSteps(ctx, 300, 150, [point(1, 0), point(2, 0.5), point(3, 0.25)], { log: true });
  assert.ok(ctx.calls.filter(([n]) => n === "lineTo").every(([, x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  const bars = recorder();
  const bins = sigmaBins([point(1), point(2), point(3)]);
  const layout = drawSigma(bars, 300, 150, bins, { hover: 1 });
  assert.equal(bars.calls.filter(([n]) => n === "fillRect").length, 3);
  assert.equal(layout.kind, "sigma");
  assert.equal(layout.index(44 + 1), 0);
  assert.match(hoverText("sigma", bins[1], null), /^σ 0\.1–0\.2: mean loss 1\.0000 over 1 step\(s\)$/);
});
