// A time-series chart in SVG: the valid observations as points and the interpolated series as a line.
// Each point carries its date and value (data-date, data-value), so what is drawn can be checked.
import { el } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 360; // the viewBox; the chart scales to its container's width
const HEIGHT = 190;
const PAD = { left: 36, right: 8, top: 10, bottom: 24 };

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

const time = (iso) => Date.parse(iso);

/**
 * Draw `series` ({band, observations: [{date, value}], interpolated: [{date, value}]}) into `container`.
 * `marks` are dates to draw as dashed vertical lines (e.g. the acquisition shown in the strip).
 */
export function drawSeries(container, series, { marks = [] } = {}) {
  const points = [...series.observations, ...series.interpolated];
  if (!points.length) {
    container.replaceChildren(el("p", { class: "muted" }, `No valid ${series.band} observations here.`));
    return;
  }
  const times = points.map((p) => time(p.date));
  const values = points.map((p) => p.value);
  // Whole years on the x axis, a little room above and below the values.
  const firstYear = new Date(Math.min(...times)).getUTCFullYear();
  const lastYear = new Date(Math.max(...times)).getUTCFullYear();
  const t0 = Date.UTC(firstYear, 0, 1);
  const t1 = Date.UTC(lastYear + 1, 0, 1);
  let v0 = Math.min(...values);
  let v1 = Math.max(...values);
  const room = (v1 - v0) * 0.08 || 0.05;
  v0 -= room;
  v1 += room;
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (WIDTH - PAD.left - PAD.right);
  const y = (v) => HEIGHT - PAD.bottom - ((v - v0) / (v1 - v0)) * (HEIGHT - PAD.top - PAD.bottom);

  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img" });
  chart.append(svg("title", {}, `${series.band} over time`));
  // Axes: a tick at each 1 January and each quarter; four value ticks.
  for (let year = firstYear; year <= lastYear + 1; year++) {
    const tx = x(Date.UTC(year, 0, 1));
    chart.append(svg("line", { x1: tx, x2: tx, y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "grid year" }));
    if (year <= lastYear) {
      const mid = x(Date.UTC(year, 6, 1));
      chart.append(svg("text", { x: mid, y: HEIGHT - 8, class: "axis", "text-anchor": "middle" }, String(year)));
      for (const month of [3, 6, 9]) {
        const qx = x(Date.UTC(year, month, 1));
        chart.append(svg("line", { x1: qx, x2: qx, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom + 4, class: "tick" }));
      }
    }
  }
  for (let i = 0; i <= 3; i++) {
    const value = v0 + ((v1 - v0) * i) / 3;
    const ty = y(value);
    chart.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: ty, y2: ty, class: "grid" }));
    chart.append(svg("text", { x: PAD.left - 4, y: ty + 4, class: "axis", "text-anchor": "end" }, value.toFixed(2)));
  }
  for (const date of marks) {
    const mx = x(time(date));
    chart.append(svg("line", { x1: mx, x2: mx, y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "mark" }));
  }
  if (series.interpolated.length) {
    const path = series.interpolated.map((p, i) => `${i ? "L" : "M"}${x(time(p.date)).toFixed(1)},${y(p.value).toFixed(1)}`);
    chart.append(svg("path", { d: path.join(" "), class: "interpolated" }));
  }
  for (const p of series.observations) {
    const dot = svg("circle", { cx: x(time(p.date)), cy: y(p.value), r: 3.5, class: "observation" });
    dot.dataset.date = p.date;
    dot.dataset.value = p.value;
    dot.append(svg("title", {}, `${p.date.slice(0, 10)}: ${p.value}${p.pixels > 1 ? ` (mean of ${p.pixels} px)` : ""}`));
    chart.append(dot);
  }
  const key = el(
    "div",
    { class: "chart-key" },
    el("span", { class: "key-dot" }),
    ` valid observations (${series.observations.length})  `,
    el("span", { class: "key-line" }),
    series.interpolated.length ? ` interpolated (${series.interpolated.length})` : " no interpolated series for this band",
  );
  container.replaceChildren(chart, key);
}
