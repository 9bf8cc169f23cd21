// Small inline SVG charts: built with DOM calls, sized in pixels, every bar with a tooltip (<title>).

import {s} from "./dom.js";

/** Vertical bars: points = [{label, value, title}]; the y axis starts at 0. */
export function bars(points, {width = 560, height = 150, unit = ""} = {}) {
  const left = 34;
  const bottom = 22;
  const top = 10;
  const max = niceCeiling(Math.max(1, ...points.map((p) => p.value)));
  const plotW = width - left - 6;
  const plotH = height - bottom - top;
  const step = plotW / Math.max(1, points.length);
  const svg = s("svg", {class: "chart bars", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${points.length} bars, highest ${max}${unit}`});
  for (const frac of max % 2 === 0 ? [0, 0.5, 1] : [0, 1]) {
    const y = top + plotH * (1 - frac);
    svg.append(s("line", {x1: left, x2: width - 6, y1: y, y2: y, class: "gridline"}),
      s("text", {x: left - 6, y: y + 4, class: "axis", "text-anchor": "end"}, String(Math.round(max * frac))));
  }
  points.forEach((p, i) => {
    const h = (p.value / max) * plotH;
    const x = left + i * step + step * 0.15;
    svg.append(s("rect", {x, y: top + plotH - h, width: Math.max(1, step * 0.7), height: Math.max(p.value ? 1 : 0, h),
      class: p.value ? "bar" : "bar zero", "data-value": p.value}, s("title", {}, p.title || `${p.label}: ${p.value}`)));
    if (p.tick) {
      svg.append(s("text", {x: left + i * step + step / 2, y: height - 6, class: "axis", "text-anchor": "middle"},
        p.tick));
    }
  });
  return svg;
}

/** The smallest 1, 2 or 5 × 10ⁿ at least ``value``: an axis that reads well. */
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= value);
}

/** A horizontal meter: value of max, with a class for its tone (ok, warn, bad). */
export function meter(value, max, {width = 240, height = 10} = {}) {
  const ratio = max > 0 && Number.isFinite(value) ? Math.min(1, Math.max(0, value / max)) : 0;
  const tone = ratio >= 0.9 ? "bad" : ratio >= 0.7 ? "warn" : "ok";
  return s("svg", {class: "meter", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${Math.round(ratio * 100)} percent`},
  s("rect", {x: 0, y: 0, width, height, rx: height / 2, class: "meter-track"}),
  s("rect", {x: 0, y: 0, width: Math.max(ratio ? 3 : 0, width * ratio), height, rx: height / 2,
    class: `meter-fill ${tone}`}));
}
