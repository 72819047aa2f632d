// Lag over time, kept in the page: each poll of GET /v1/deployment adds one sample per
// node that answered (messages behind, summed over the logs it reads; the age of the
// oldest message it has not applied, the worst log). Samples older than the window are
// dropped, so memory stays bounded (window / poll interval samples per node, and at
// most NODES_MAX nodes). Drawn as inline SVG, one line per node; a node that did not
// answer for a while leaves a gap rather than a line through the silence.

const SVG = "http://www.w3.org/2000/svg";
const NODES_MAX = 256;
const SAMPLES_MAX = 1000;
// Two samples further apart than this are not joined by a line.
const GAP_MS = 6000;
// The shortest time axis drawn.
const SPAN_MIN_MS = 60 * 1000;
const WIDTH = 640;
const HEIGHT = 200;
const PAD = { left: 52, right: 12, top: 10, bottom: 24 };
const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569"];

export class LagHistory {
  constructor(windowMs) {
    this.windowMs = windowMs;
    // node name -> { region, samples: [{ t, seq, ms }] }
    this.nodes = new Map();
  }

  add(t, body) {
    for (const [region, r] of Object.entries(body.regions)) {
      for (const n of r.nodes) {
        const lags = Object.values(n.lag || {}).filter((l) => typeof l.seq === "number");
        const seq = lags.reduce((sum, l) => sum + l.seq, 0);
        const ms = lags.reduce((worst, l) => Math.max(worst, l.ms), 0);
        // A mirror that does not hear its upstream region cannot know how far behind it is.
        const cut = Object.entries(n.lag || {}).some(([o, l]) => o !== region && typeof l.seq === "number" && !l.mirror_connected);
        if (!this.nodes.has(n.node)) {
          if (this.nodes.size >= NODES_MAX) continue;
          this.nodes.set(n.node, { region, samples: [] });
        }
        const samples = this.nodes.get(n.node).samples;
        samples.push({ t, seq, ms, cut });
        if (samples.length > SAMPLES_MAX) samples.shift();
      }
    }
    for (const [name, h] of this.nodes) {
      while (h.samples.length && h.samples[0].t < t - this.windowMs) h.samples.shift();
      if (!h.samples.length) this.nodes.delete(name);
    }
  }

  names() {
    return [...this.nodes.keys()].sort();
  }
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// The smallest of 1, 2, 5 x 10^k at or above `v` (and at least `floor`).
function niceMax(v, floor) {
  const target = Math.max(v, floor);
  const pow = 10 ** Math.floor(Math.log10(target));
  for (const m of [1, 2, 5, 10]) if (m * pow >= target) return m * pow;
  return 10 * pow;
}

function label(v, unit) {
  if (unit === "ms" && v >= 1000) return `${v / 1000} s`;
  return unit === "ms" ? `${v} ms` : String(v);
}

// "10 min", "2.5 min", "30 s".
function span(ms) {
  return ms >= 60000 ? `${Math.round(ms / 6000) / 10} min` : `${Math.round(ms / 1000)} s`;
}

function chart(container, history, now, field, floor, unit) {
  let top = 0;
  let oldest = now;
  for (const h of history.nodes.values()) {
    for (const s of h.samples) {
      top = Math.max(top, s[field]);
      oldest = Math.min(oldest, s.t);
    }
  }
  // The time axis grows with the history, from one minute up to the whole window.
  const width = Math.min(history.windowMs, Math.max(SPAN_MIN_MS, now - oldest));
  const x0 = now - width;
  const yMax = niceMax(top, floor);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - x0) / width) * plotW;
  const y = (v) => PAD.top + plotH - (v / yMax) * plotH;
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "data-field": field, "data-max": yMax });
  root.append(svg("title", {}, `${field === "seq" ? "messages behind" : "oldest unapplied"}, per node`));
  for (let i = 0; i <= 4; i++) {
    const v = (yMax / 4) * i;
    root.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, label(v, unit)));
  }
  for (const [t, text] of [[x0, `-${span(width)}`], [x0 + width / 2, `-${span(width / 2)}`], [now, "now"]]) {
    const anchor = t === x0 ? "start" : t === now ? "end" : "middle";
    root.append(svg("text", { x: x(t), y: HEIGHT - 6, "text-anchor": anchor, class: "tick" }, text));
  }
  shadeCuts(root, history, x, x0, plotH);
  history.names().forEach((name, i) => {
    const color = PALETTE[i % PALETTE.length];
    const group = svg("g", { "data-node": name, class: "series" });
    let run = [];
    const flush = () => {
      if (run.length === 1) group.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 2, fill: color }));
      if (run.length > 1) {
        group.append(svg("polyline", { points: run.map((p) => p.join(",")).join(" "), fill: "none", stroke: color, "stroke-width": 1.6 }));
      }
      run = [];
    };
    let last = null;
    for (const s of history.nodes.get(name).samples) {
      if (last !== null && s.t - last > GAP_MS) flush();
      run.push([x(s.t).toFixed(1), y(s[field]).toFixed(1)]);
      last = s.t;
    }
    flush();
    group.setAttribute("data-samples", String(history.nodes.get(name).samples.length));
    root.append(group);
  });
  container.replaceChildren(root);
}

// Shade the times some node's mirror was cut off from its upstream region (its lag
// there reads 0 but is unknown).
function shadeCuts(root, history, x, x0, plotH) {
  const times = [];
  for (const h of history.nodes.values()) for (const s of h.samples) if (s.cut && s.t >= x0) times.push(s.t);
  times.sort((a, b) => a - b);
  const spans = [];
  for (const t of times) {
    const last = spans[spans.length - 1];
    if (last && t - last[1] <= GAP_MS) last[1] = t;
    else spans.push([t, t]);
  }
  for (const [from, to] of spans) {
    const left = Math.max(PAD.left, x(from - 1000));
    const right = Math.min(WIDTH - PAD.right, x(to + 1000));
    const band = svg("rect", { x: left, y: PAD.top, width: Math.max(2, right - left), height: plotH, class: "cut-band" });
    band.append(svg("title", {}, "a mirror was cut off from its upstream region: lag unknown"));
    root.append(band);
    root.append(svg("text", { x: left + 3, y: PAD.top + 11, class: "cut-label" }, "mirror cut"));
  }
}

export function drawCharts(seqEl, msEl, legendEl, history, now) {
  chart(seqEl, history, now, "seq", 1, "");
  chart(msEl, history, now, "ms", 10, "ms");
  const items = history.names().map((name, i) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    item.setAttribute("data-node", name);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = PALETTE[i % PALETTE.length];
    const h = history.nodes.get(name);
    const last = h.samples[h.samples.length - 1];
    item.append(swatch, document.createTextNode(`${name} (${last.seq} msgs · ${last.ms} ms)`));
    return item;
  });
  legendEl.replaceChildren(...items);
}
