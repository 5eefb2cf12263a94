// Charts, drawn by uPlot (vendor/uPlot.iife.min.js, MIT): a small, maintained library that
// draws on a canvas, so no string from the API is ever parsed as markup. A chart keeps its
// uPlot between refreshes (setData), follows its box's width, and tells how many points it
// holds in data-points (what the browser tests read).

import { h } from "./dom.js";

const PALETTE = ["#2f6fde", "#e0572b", "#1f9d6b", "#9b51e0", "#c8a000", "#d6336c"];

export class Chart {
  // parent: element to append to; opts: {title, series: [{label, color, scale: "y" | "y2"}],
  // time, xLabel, yLabel, y2Label, height, empty, zero (the y axes start at 0)}
  constructor(parent, opts) {
    this.opts = { time: true, height: 200, empty: "no data yet", ...opts };
    this.note = h("p", { class: "chart-empty" }, this.opts.empty);
    this.plotBox = h("div", { class: "chart-plot" });
    this.el = h("figure", { class: "chart", dataset: { chart: opts.title, points: "0" } },
      h("figcaption", null, opts.title), this.plotBox, this.note);
    parent.append(this.el);
    this.plot = null;
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this.plotBox);
  }

  width() {
    return Math.max(200, Math.floor(this.plotBox.clientWidth || this.el.clientWidth || 300));
  }

  fit() {
    if (this.plot) {
      const w = this.width();
      if (Math.abs(w - this.plot.width) > 2) this.plot.setSize({ width: w, height: this.opts.height });
    }
  }

  scales() {
    const o = this.opts, scales = { x: { time: o.time } };
    if (o.zero) {
      scales.y = { range: fromZero };
      if (o.series.some((s) => s.scale === "y2")) scales.y2 = { range: fromZero };
    }
    return scales;
  }

  // data: [xs, ys1, ys2, ...] (xs: unix seconds when time, else numbers)
  update(data) {
    const points = data[0] ? data[0].length : 0;
    this.el.dataset.points = String(points);
    this.note.hidden = points > 0;
    this.plotBox.hidden = points === 0;
    if (!window.uPlot) return; // the library failed to load: the table views still work
    if (this.plot && this.plot.series.length === data.length) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    const o = this.opts;
    this.plot = new window.uPlot({
      width: this.width(),
      height: o.height,
      scales: this.scales(),
      series: [{ label: o.xLabel || (o.time ? "time" : "step") },
        ...o.series.map((s, i) => ({
          label: s.label,
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: 2,
          spanGaps: true,
          scale: s.scale || "y",
          points: { show: points < 60 },
        }))],
      axes: [{}, { label: o.yLabel || "", scale: "y", size: 60 },
        ...(o.series.some((s) => s.scale === "y2")
          ? [{ side: 1, scale: "y2", label: o.y2Label || "", grid: { show: false }, size: 60 }]
          : [])],
      legend: { live: true },
    }, data, this.plotBox);
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

// A y range from 0 (usage, rates: a flat line near its top would look like a swing).
function fromZero(_u, _min, max) {
  return [0, max > 0 ? max * 1.1 : 1];
}

export const seconds = (iso) => new Date(iso).getTime() / 1000;

// What a job or node used over time (/v1/monitor/usage: {samples: [{at, cpu, memory_mb,
// gpu_util, gpu_memory_mb}]}): cpu cores (left axis), resident memory MB (right axis), and
// GPU utilisation in percent once a sample has it.
export class UsageChart {
  constructor(parent, title) {
    this.parent = parent;
    this.title = title;
    this.box = h("div", { class: "usage" });
    parent.append(this.box);
    this.gpu = false;
    this.chart = this.make();
  }

  make() {
    const series = [{ label: "cpu (cores)" }, { label: "memory (MB)", scale: "y2" }];
    if (this.gpu) series.push({ label: "gpu (%)" });
    return new Chart(this.box, {
      title: this.title, series, yLabel: this.gpu ? "cores / %" : "cores", y2Label: "MB",
      zero: true,
      empty: "no samples yet (the sampler measures every few seconds)",
    });
  }

  update(usage) {
    const s = (usage && usage.samples) || [];
    const gpu = s.some((r) => r.gpu_util !== null && r.gpu_util !== undefined);
    if (gpu !== this.gpu) {
      this.gpu = gpu;
      this.chart.destroy();
      this.chart.el.remove();
      this.chart = this.make();
    }
    const data = [s.map((r) => seconds(r.at)), s.map((r) => r.cpu), s.map((r) => r.memory_mb)];
    if (gpu) data.push(s.map((r) => (r.gpu_util === null ? null : r.gpu_util * 100)));
    this.chart.update(data);
  }

  destroy() {
    this.chart.destroy();
  }
}
