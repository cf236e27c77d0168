// Metric charts drawn with the vendored uPlot (global `uPlot`, loaded by the page before the modules).
//
// A series comes from GET /api/jobs/{id}/series as buckets {first_step, last_step, min, max, last, count, ...}:
// the chart draws the min/max band and the last-value line (W&B's full-fidelity mode), so a single spike among a
// million points stays visible. Live points (SSE `metrics`) append raw, as one-point buckets; past RAW_BOUND raw
// points a key is re-bucketed by the server. Zooming (drag across the chart) re-queries the visible range;
// a double click goes back to the whole run.
//
// A job with more keys than MAX_CHARTS (per page: the job page's non-system keys, the system page's system/ keys,
// the compare page's keys of every job together) gets a key picker instead of one chart per key: every key is in
// its list (filtered by a search box), the first MAX_CHARTS keys are charted, and checking or unchecking a key
// adds or removes its chart. Only the charted keys' series are read and followed. /api/jobs/{id}/series answers
// every key of the job (the dashboard follows the backend's pages of 1,000 keys), up to the dashboard's bound,
// and says when that bound left keys out. The picked keys are in the page's address (one `key` parameter each,
// written with history.replaceState as keys are checked), so a reload or a shared link charts the same keys; every
// key unchecked is one empty `key=`, which charts none; with no `key` parameter naming a key of the page (and no
// empty one), the first MAX_CHARTS are charted.

import { api, el, formatTick, formatValue } from "./common.js";

export const PALETTE = ["#2f6db5", "#d9622b", "#2e8b57", "#8e44ad", "#b8860b", "#c0392b", "#16a085", "#7f8c8d"];
const RAW_BOUND = 2000;
/** The most charts one page draws at once: a job with more keys gets a key picker. */
export const MAX_CHARTS = 30;
/** The most keys the picker lists at once (the search box narrows them). */
const PICKER_ROWS = 200;

/** The keys the page's address picks (its `key` parameters, each one key exactly), among `known` (the page's
 * keys: others are ignored), at most MAX_CHARTS; [] when it names none of them but has an empty `key` (every key
 * was unchecked: none is charted); null when it names none of them (the page charts its first). */
export function keysFromAddress(known) {
  const given = new URLSearchParams(location.search).getAll("key");
  const keys = [...new Set(given.filter((key) => known.has(key)))].sort().slice(0, MAX_CHARTS);
  if (keys.length) return keys;
  return given.includes("") ? [] : null;
}

/** Puts the picked keys in the page's address (one `key` parameter each, in key order, or one empty `key` when
 * none is picked; the other parameters stay as they are) without reloading: a reload or the link opened elsewhere
 * charts the same keys. */
export function keysToAddress(keys) {
  const others = location.search.slice(1).split("&").filter((part) => part && !/^key(=|$)/.test(part));
  const picked = [...keys].sort();
  const named = picked.length ? picked.map((key) => `key=${encodeURIComponent(key)}`) : ["key="];
  const query = [...others, ...named].join("&");
  history.replaceState(history.state, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  window.dispatchEvent(new Event(KEYS_CHANGED));
}

/** The event keysToAddress sends on `window` once the address names other keys. */
export const KEYS_CHANGED = "tp-keys-changed";

/** `path` with the page's picked keys (its address's `key` parameters, the empty one of no key included) appended:
 * a link to another page that charts the same keys. */
export function withAddressKeys(path) {
  const keys = location.search.slice(1).split("&").filter((part) => /^key=/.test(part));
  if (!keys.length) return path;
  return `${path}${path.includes("?") ? "&" : "?"}${keys.join("&")}`;
}

/** A drawable number: the API sends non-finite values as the strings "NaN", "Infinity", "-Infinity" (gaps). */
export function finite(value) {
  const n = typeof value === "number" ? value : Number(value);
  return Number.isFinite(n) ? n : null;
}

/** `#rrggbb` with an alpha, for the band. */
function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

/** The buckets' budget for a chart: about one per pixel, at most 1000. */
export function maxPointsFor(width) {
  return Math.max(100, Math.min(1000, Math.round(width || 800)));
}

const PREFIX = /^([A-Za-z_][A-Za-z0-9_.-]{0,63})\//;

/** "train/loss" -> "train": a key is grouped by its first segment when that looks like a name (letters, digits,
 * `_`, `.`, `-`); any other key (no slash, or a slash inside something else: `<script>…</script>`) goes to "other". */
export function prefixOf(key) {
  const match = PREFIX.exec(key);
  return match ? match[1] : "other";
}

/** One job's series, bucketed by the server plus raw live points, with the cursors that keep each point once. */
export class SeriesStore {
  constructor(jobId) {
    this.jobId = jobId;
    this.keys = new Map(); // key -> {buckets, raw, base (last_sequence the buckets include), lastSeq}
    this.lastSequence = 0; // of the first full load: the SSE stream resumes after it
    this.epochs = new Map(); // epoch -> [min step, max step]
    this.tracked = null; // null: every key's points are kept; else only those of the keys in this Set
  }

  entry(key) {
    let entry = this.keys.get(key);
    if (!entry) {
      entry = { buckets: [], raw: [], base: this.lastSequence, lastSeq: this.lastSequence, totalPoints: 0 };
      this.keys.set(key, entry);
    }
    return entry;
  }

  async fetch({ keys = [], maxPoints = 1000, minStep = null, maxStep = null } = {}) {
    // One `key` parameter a key: a key may hold commas.
    const query = new URLSearchParams([...keys.map((key) => ["key", key]), ["max_points", String(maxPoints)]]);
    if (minStep !== null) query.set("min_step", String(Math.floor(minStep)));
    if (maxStep !== null) query.set("max_step", String(Math.ceil(maxStep)));
    return api(`/api/jobs/${encodeURIComponent(this.jobId)}/series?${query}`);
  }

  /** The first load: every key (or `keys`) over the whole run. The answer may come from several backend reads:
   * each series says up to which sequence it holds the key's points, and `last_sequence` is the lowest of them. */
  async load(maxPoints, keys = []) {
    const answer = await this.fetch({ keys, maxPoints });
    this.lastSequence = answer.last_sequence || 0;
    for (const series of answer.series) {
      this.replace(series.key, series.buckets, series.last_sequence ?? this.lastSequence);
    }
    return answer;
  }

  /** New buckets for a key that include every point up to `base`; raw points after it stay. */
  replace(key, buckets, base) {
    const entry = this.entry(key);
    entry.buckets = buckets;
    entry.base = base;
    entry.raw = entry.raw.filter((p) => p.sequence > base);
    entry.lastSeq = Math.max(entry.lastSeq, base);
    for (const b of buckets) {
      this.noteEpoch(b.first_epoch, b.first_step);
      this.noteEpoch(b.last_epoch, b.last_step);
    }
    this.count(entry);
  }

  count(entry) {
    entry.totalPoints = entry.raw.length + entry.buckets.reduce((sum, b) => sum + (b.count || 0), 0);
  }

  noteEpoch(epoch, step) {
    if (epoch === null || epoch === undefined || step === null || step === undefined) return;
    const range = this.epochs.get(epoch);
    if (!range) this.epochs.set(epoch, [step, step]);
    else {
      range[0] = Math.min(range[0], step);
      range[1] = Math.max(range[1], step);
    }
  }

  /** Appends live points; returns the keys that changed. A point at or before a key's cursor is already shown. */
  append(points) {
    const changed = new Set();
    for (const p of points) {
      if (this.tracked !== null && !this.tracked.has(p.key)) continue;
      const entry = this.entry(p.key);
      if (p.sequence <= entry.lastSeq) continue;
      entry.lastSeq = p.sequence;
      entry.raw.push({ step: p.step, value: p.value, epoch: p.epoch, sequence: p.sequence });
      entry.totalPoints += 1;
      this.noteEpoch(p.epoch, p.step);
      changed.add(p.key);
    }
    return changed;
  }

  needsRebucket(key) {
    const entry = this.keys.get(key);
    return entry !== undefined && entry.raw.length > RAW_BOUND;
  }

  /** Asks the server to bucket one key again (past the raw bound). */
  async rebucket(key, maxPoints) {
    const answer = await this.fetch({ keys: [key], maxPoints });
    const series = answer.series.find((s) => s.key === key);
    this.replace(key, series ? series.buckets : [], answer.last_sequence || 0);
  }

  /** A step's x: the step, or the epoch plus the step's fraction of that epoch's steps. */
  xOf(step, epoch, mode) {
    if (mode !== "epoch") return step;
    if (epoch === null || epoch === undefined) return null;
    const range = this.epochs.get(epoch);
    if (!range || range[1] <= range[0]) return epoch;
    return epoch + (step - range[0]) / (range[1] - range[0] + 1);
  }

  /** The inverse of xOf, for turning a zoomed epoch range back into steps (approximate, widened). */
  stepOf(x, mode, upper) {
    if (mode !== "epoch") return x;
    const epoch = Math.floor(x);
    const range = this.epochs.get(epoch);
    if (!range) {
      const all = [...this.epochs.values()];
      if (all.length === 0) return upper ? null : 0;
      return upper ? Math.max(...all.map((r) => r[1])) : Math.min(...all.map((r) => r[0]));
    }
    return range[0] + (x - epoch) * (range[1] - range[0] + 1);
  }

  /** [x, min, max, last] columns for uPlot from buckets (and raw points after `base`); the table's `shown` holds
   * each row's last value as it came ("NaN", "Infinity", "-Infinity" included: drawn as gaps, shown as text). */
  table(key, mode, buckets = null, base = null) {
    const entry = this.keys.get(key);
    if (!entry) return withShown([[], [], [], []], []);
    const rows = [];
    for (const b of buckets ?? entry.buckets) {
      rows.push([this.xOf(b.last_step, b.last_epoch, mode), finite(b.min), finite(b.max), finite(b.last), b.last]);
    }
    const after = base ?? entry.base;
    for (const p of entry.raw) {
      if (p.sequence > after) {
        const value = finite(p.value);
        rows.push([this.xOf(p.step, p.epoch, mode), value, value, value, p.value]);
      }
    }
    const clean = rows.filter((r) => r[0] !== null && Number.isFinite(r[0]));
    clean.sort((a, b) => a[0] - b[0]);
    return withShown(
      [0, 1, 2, 3].map((i) => clean.map((r) => r[i])),
      clean.map((r) => r[4]),
    );
  }
}

function withShown(table, shown) {
  table.shown = shown;
  return table;
}

/** Whether a value as it came is NaN or ±∞ (a string from the API, or a number). */
function nonFinite(value) {
  return value !== null && value !== undefined && finite(value) === null;
}

/** A y-axis label that fits beside the chart: the key without its prefix, shortened. */
function axisLabel(key) {
  const prefix = prefixOf(key);
  const name = prefix !== "other" ? key.slice(prefix.length + 1) : key;
  return name.length > 28 ? `${name.slice(0, 27)}…` : name;
}

/** For a log scale: values that are not positive cannot be drawn. */
function positiveOnly(column) {
  return column.map((v) => (v !== null && v > 0 ? v : null));
}

/** Below this, uPlot cannot range a linear scale (it rounds scales to 24 decimals and has no tick step under
 * 1e-16: a series of 1e-30s is drawn flat at 0 on a 0..100 axis). */
const TINY = 1e-10;

/** The unit a linear chart of `tables` is drawn in: 1, or for values all smaller than TINY the power of ten of the
 * largest (the y axis then says it: "loss (×1e-30)"). */
function unitOf(tables) {
  let largest = 0;
  for (const table of tables) {
    for (const column of table.slice(1, 4)) {
      for (const v of column) if (v !== null && Math.abs(v) > largest) largest = Math.abs(v);
    }
  }
  return largest > 0 && largest < TINY ? 10 ** Math.floor(Math.log10(largest)) : 1;
}

/**
 * One uPlot chart with its own legend. `lines`: [{label, color}]; setTables() gets one [x, min, max, last]
 * table per line.
 */
export class MetricChart {
  constructor(parent, { title, xLabel, yLabel, lines, log = false, height = 220, onZoom, onReset }) {
    this.lines = lines;
    this.log = log;
    this.xLabel = xLabel;
    this.yLabel = yLabel ?? axisLabel(title);
    this.height = height;
    this.onZoom = onZoom;
    this.onReset = onReset;
    this.zoomed = false;
    this.plot = null;
    this.tables = lines.map(() => [[], [], [], []]);
    this.unit = 1; // of the linear y axis: unitOf(this.tables)
    this.legendValues = [];
    const legend = el(
      "div",
      { class: "legend" },
      lines.map((line, i) => {
        const value = el("span", { class: "legend-value", text: "" });
        this.legendValues[i] = value;
        return el(
          "span",
          { class: "legend-item" },
          el("span", { class: "swatch", "data-color": String(i % PALETTE.length) }),
          el("span", { class: "legend-label", text: line.label }),
          value,
        );
      }),
      el("span", { class: "legend-note", text: "band: min–max of each bucket" }),
    );
    this.note = el("p", { class: "chart-note muted small", hidden: true });
    this.zoomNote = el("button", { type: "button", class: "link-button", text: "reset zoom", hidden: true });
    this.zoomNote.addEventListener("click", () => this.resetZoom());
    this.box = el("div", { class: "plot" });
    this.root = el(
      "figure",
      { class: "chart", "data-key": title },
      el("figcaption", {}, el("span", { class: "chart-title", text: title }), this.zoomNote),
      this.box,
      this.note,
      legend,
    );
    parent.append(this.root);
    this.resize = new ResizeObserver(() => {
      if (this.plot && this.box.clientWidth > 0) this.plot.setSize({ width: this.box.clientWidth, height: this.height });
    });
    this.resize.observe(this.box);
  }

  options() {
    const series = [{ label: this.xLabel }];
    const bands = [];
    this.lines.forEach((line, i) => {
      const color = PALETTE[i % PALETTE.length];
      const base = 1 + i * 3;
      series.push(
        { label: `${line.label} min`, stroke: alpha(color, 0.35), width: 1, spanGaps: true, points: { show: false } },
        { label: `${line.label} max`, stroke: alpha(color, 0.35), width: 1, spanGaps: true, points: { show: false } },
        // Points show by themselves where the line is sparse (a series of one point is still visible).
        { label: line.label, stroke: color, width: 1.5, spanGaps: true, points: { size: 5, fill: color } },
      );
      bands.push({ series: [base + 1, base], fill: alpha(color, 0.15) });
    });
    const axis = { stroke: "#444", grid: { stroke: "#eceef1", width: 1 }, ticks: { stroke: "#d0d4da", width: 1 } };
    return {
      width: Math.max(200, this.box.clientWidth || 600),
      height: this.height,
      legend: { show: false },
      scales: { x: { time: false }, y: this.log ? { distr: 3 } : { auto: true } },
      axes: [
        { ...axis, label: this.xLabel, labelSize: 18, size: 36, values: (u, values) => values.map((v) => formatTick(v)) },
        {
          ...axis,
          label: this.unit === 1 || this.log ? this.yLabel : `${this.yLabel} (×${formatTick(this.unit)})`,
          labelSize: 18,
          size: 64,
          // Log axes leave some ticks unlabelled (null) so that labels never overlap.
          values: (u, values) => values.map((v) => formatTick(v)),
        },
      ],
      series,
      bands,
      cursor: { drag: { x: true, y: false, setScale: true }, points: { show: false } },
      hooks: {
        setSelect: [(u) => this.selected(u)],
        setCursor: [(u) => this.showCursor(u)],
        setScale: [(u, key) => this.showYRange(u, key)],
      },
    };
  }

  /** The y axis's range, in the values' units, as `data-y-range` ("min max") on the chart. */
  showYRange(u, key) {
    if (key !== "y") return;
    const unit = this.log ? 1 : this.unit;
    this.root.dataset.yRange = `${u.scales.y.min * unit} ${u.scales.y.max * unit}`;
  }

  build() {
    this.plot?.destroy();
    this.unit = unitOf(this.tables);
    this.root.dataset.yUnit = formatTick(this.unit);
    this.plot = new uPlot(this.options(), this.data(), this.box);
    this.plot.over.addEventListener("dblclick", () => this.resetZoom());
    this.showCursor(this.plot);
    this.noteNonFinite();
  }

  data() {
    const unit = this.unit;
    const inUnit = (column) => column.map((v) => (v === null ? null : v / unit));
    const tables = this.tables.map((t) => {
      if (this.log) return [t[0], positiveOnly(t[1]), positiveOnly(t[2]), positiveOnly(t[3])];
      return unit === 1 ? t : [t[0], inUnit(t[1]), inUnit(t[2]), inUnit(t[3])];
    });
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  }

  setTables(tables, { keepScale = this.zoomed } = {}) {
    this.tables = tables;
    // A new unit is a new y axis label: the chart is made again.
    if (!this.plot || unitOf(tables) !== this.unit) this.build();
    else this.plot.setData(this.data(), !keepScale);
    this.showCursor(this.plot);
    this.noteNonFinite();
  }

  /** Says on the chart how many values are NaN or ±∞: they are gaps in the lines, shown as text in the legend. */
  noteNonFinite() {
    let odd = 0;
    let all = 0;
    for (const table of this.tables) {
      const shown = table.shown || [];
      all += shown.length;
      odd += shown.filter(nonFinite).length;
    }
    this.root.dataset.nonFinite = String(odd);
    // A log scale cannot draw 0 or a negative value either: said too, or a chart of them would be blank.
    let notPositive = 0;
    if (this.log) {
      for (const table of this.tables) notPositive += (table.shown || []).filter((v) => finite(v) !== null && finite(v) <= 0).length;
    }
    const notes = [];
    if (odd) {
      notes.push(
        odd === all
          ? "NaN or ±∞: every value of this chart is NaN, ∞ or −∞, which cannot be drawn (the legend shows them)."
          : `${odd} of ${all} values are NaN, ∞ or −∞ and cannot be drawn: they are gaps (the legend shows them).`,
      );
    }
    if (notPositive) {
      notes.push(
        notPositive === all
          ? "On a log scale: every value of this chart is 0 or negative, which a log scale cannot draw."
          : `On a log scale: ${notPositive} of ${all} values are 0 or negative and cannot be drawn: they are gaps.`,
      );
    }
    this.note.hidden = notes.length === 0;
    this.note.textContent = notes.join(" ");
  }

  setLog(log) {
    if (log === this.log) return;
    this.log = log;
    if (this.plot) this.build();
  }

  setXLabel(label) {
    this.xLabel = label;
    if (this.plot) this.build();
  }

  /** Legend values: under the cursor, else the last value of each line (NaN, ∞ and −∞ as text: they have no
   * place on the chart). */
  showCursor(u) {
    const idx = u.cursor.idx;
    this.lines.forEach((line, i) => {
      const table = this.tables[i] || [[]];
      const shown = table.shown || table[3] || [];
      let value = null;
      if (idx !== null && idx !== undefined) {
        const row = table[0].indexOf(u.data[0][idx]);
        if (row >= 0) value = shown[row];
      } else {
        for (let j = shown.length - 1; j >= 0; j--) {
          if (shown[j] !== null && shown[j] !== undefined) {
            value = shown[j];
            break;
          }
        }
      }
      this.legendValues[i].textContent = value === null || value === undefined ? "" : formatValue(value);
    });
  }

  selected(u) {
    if (u.select.width < 2) return;
    const min = u.posToVal(u.select.left, "x");
    const max = u.posToVal(u.select.left + u.select.width, "x");
    this.zoomed = true;
    this.zoomNote.hidden = false;
    this.onZoom?.(min, max);
  }

  resetZoom() {
    this.zoomed = false;
    this.zoomNote.hidden = true;
    if (this.onReset) this.onReset();
    else this.plot?.setData(this.data(), true);
  }

  destroy() {
    this.resize.disconnect();
    this.plot?.destroy();
    this.root.remove();
  }
}

/**
 * Every key of one job as charts, grouped by prefix into sections; live points are appended through
 * `append(points)`. `filter(key)` picks the keys (the job page shows all but `system/`; the system page only those).
 */
export class JobCharts {
  constructor(container, store, { filter = () => true, xMode = "step", log = false } = {}) {
    this.container = container;
    this.store = store;
    this.filter = filter;
    this.xMode = xMode;
    this.log = log;
    this.charts = new Map(); // key -> {chart, zoom: null | {buckets, base, min, max}}
    this.sections = new Map();
    this.dirty = new Set();
    this.frame = null;
    this.rebucketing = new Set();
    this.empty = el("p", { class: "muted empty", text: "No metrics yet: charts appear with the first point." });
    this.notice = el("p", { class: "banner warning", id: "keys-notice", hidden: true });
    this.known = new Set(); // every key the page knows that passes the filter (listed or seen live)
    this.listed = []; // every key of the job's key list (filtered or not), from load()
    this.picked = null; // null: every key is charted; else the charted keys (the picker is shown)
    this.picker = null;
    container.append(this.notice, this.empty);
  }

  /** Reads the job's key list, then the series of the keys to chart: all of them when there are at most
   * MAX_CHARTS, else those the page's address picks (the first MAX_CHARTS when it names none of them; none when
   * it holds only an empty `key`) with a picker for the others. */
  async load() {
    const list = await this.store.fetch({ maxPoints: 1 });
    if (list.message) {
      this.notice.textContent = list.message;
      this.notice.hidden = false;
    }
    this.listed = list.series.map((s) => s.key);
    const keys = this.listed.filter(this.filter);
    for (const key of keys) this.known.add(key);
    if (keys.length <= MAX_CHARTS) {
      await this.store.load(this.maxPoints());
    } else {
      this.pick(new Set(keysFromAddress(this.known) || keys.slice(0, MAX_CHARTS)));
      if (this.picked.size) await this.store.load(this.maxPoints(), [...this.picked]);
      else {
        // No key picked: no series to read (asking for none would read every key); live points follow the list.
        this.store.lastSequence = list.last_sequence || 0;
        this.empty.textContent = "No metric key is charted: check keys in the list above to chart them.";
      }
    }
    this.renderAll();
  }

  /** From now on only `keys` are charted (and their points kept); the picker lists every key. */
  pick(keys) {
    this.picked = keys;
    this.store.tracked = new Set(keys);
    if (!this.picker) {
      this.picker = new KeyPicker(this);
      this.notice.after(this.picker.root);
    }
    this.picker.render();
  }

  /** Charts one more key (checked in the picker; the address then names it); false when MAX_CHARTS are already
   * charted. */
  add(key) {
    if (this.picked.has(key)) return true;
    if (this.picked.size >= MAX_CHARTS) return false;
    this.picked.add(key);
    keysToAddress(this.picked);
    this.store.tracked.add(key);
    this.ensure(key);
    this.rebucketing.add(key);
    this.store
      .rebucket(key, this.maxPoints())
      .then(() => {
        if (this.picked.has(key)) this.dirty.add(key);
        else this.store.keys.delete(key); // unchecked meanwhile
      })
      .catch((error) => {
        this.notice.textContent = `Could not load ${key}: ${error.message}`;
        this.notice.hidden = false;
      })
      .finally(() => {
        this.rebucketing.delete(key);
        this.schedule();
      });
    return true;
  }

  /** Removes a key's chart (unchecked in the picker; the address then no longer names it) and forgets its
   * points. */
  remove(key) {
    this.picked.delete(key);
    keysToAddress(this.picked);
    this.store.tracked.delete(key);
    this.store.keys.delete(key);
    this.dirty.delete(key);
    const item = this.charts.get(key);
    if (!item) return;
    item.chart.destroy();
    this.charts.delete(key);
    const prefix = prefixOf(key);
    const section = this.sections.get(prefix);
    if (section && section.grid.childElementCount === 0) {
      section.remove();
      this.sections.delete(prefix);
    }
  }

  maxPoints() {
    return maxPointsFor(this.container.clientWidth / 2);
  }

  section(prefix) {
    let section = this.sections.get(prefix);
    if (!section) {
      const grid = el("div", { class: "chart-grid" });
      section = el("section", { class: "chart-section", "data-prefix": prefix }, el("h3", { text: `${prefix}/` }), grid);
      section.grid = grid;
      const later = [...this.sections.keys()].filter((p) => p > prefix).sort()[0];
      this.container.insertBefore(section, later ? this.sections.get(later) : null);
      this.sections.set(prefix, section);
    }
    return section;
  }

  ensure(key) {
    let item = this.charts.get(key);
    if (item || !this.filter(key)) return item;
    if (!this.known.has(key)) {
      this.known.add(key);
      this.picker?.render();
    }
    // Past MAX_CHARTS keys (a live job that keeps adding keys), the next keys go to the picker, not to charts.
    if (this.picked === null && this.charts.size >= MAX_CHARTS) this.pick(new Set(this.charts.keys()));
    if (this.picked !== null && !this.picked.has(key)) return undefined;
    this.empty.remove();
    const section = this.section(prefixOf(key));
    const chart = new MetricChart(section.grid, {
      title: key,
      xLabel: this.xMode,
      lines: [{ label: key }],
      log: this.log,
      onZoom: (min, max) => this.zoom(key, min, max),
      onReset: () => this.resetZoom(key),
    });
    item = { chart, zoom: null };
    // Insert in key order within the section.
    const siblings = [...section.grid.children].filter((n) => n !== chart.root);
    const next = siblings.find((n) => n.dataset.key > key);
    if (next) section.grid.insertBefore(chart.root, next);
    this.charts.set(key, item);
    return item;
  }

  /** Draws every key the store holds. */
  renderAll() {
    for (const key of [...this.store.keys.keys()].sort()) {
      if (this.ensure(key)) this.dirty.add(key);
    }
    this.flush();
  }

  append(points) {
    for (const p of points) {
      if (!this.known.has(p.key)) this.ensure(p.key);
    }
    for (const key of this.store.append(points)) {
      if (!this.ensure(key)) continue;
      this.dirty.add(key);
      if (this.store.needsRebucket(key) && !this.rebucketing.has(key)) {
        this.rebucketing.add(key);
        this.store
          .rebucket(key, this.maxPoints())
          .then(() => this.dirty.add(key))
          .catch(() => {})
          .finally(() => {
            this.rebucketing.delete(key);
            this.schedule();
          });
      }
    }
    this.schedule();
  }

  schedule() {
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.flush();
    });
  }

  flush() {
    for (const key of this.dirty) {
      const item = this.charts.get(key);
      if (!item) continue;
      const entry = this.store.keys.get(key);
      const table = item.zoom
        ? this.store.table(key, this.xMode, item.zoom.buckets, item.zoom.base)
        : this.store.table(key, this.xMode);
      item.chart.setTables([table]);
      const root = item.chart.root;
      root.dataset.totalPoints = String(entry.totalPoints);
      root.dataset.rawPoints = String(entry.raw.length);
      root.dataset.buckets = String(entry.buckets.length);
      root.dataset.drawnPoints = String(table[0].length);
      root.dataset.yMax = String(Math.max(...table[2].filter((v) => v !== null)));
    }
    this.dirty.clear();
  }

  async zoom(key, min, max) {
    const item = this.charts.get(key);
    const minStep = this.store.stepOf(min, this.xMode, false);
    const maxStep = this.store.stepOf(max, this.xMode, true);
    const answer = await this.store.fetch({ keys: [key], maxPoints: this.maxPoints(), minStep, maxStep });
    if (!item.chart.zoomed) return;
    const series = answer.series.find((s) => s.key === key);
    item.zoom = { buckets: series ? series.buckets : [], base: answer.last_sequence || 0 };
    this.dirty.add(key);
    this.flush();
  }

  resetZoom(key) {
    // The chart is no longer zoomed, so the redraw fits the scales to the whole run again.
    this.charts.get(key).zoom = null;
    this.dirty.add(key);
    this.flush();
  }

  setXMode(mode) {
    this.xMode = mode;
    for (const [key, item] of this.charts) {
      item.zoom = null;
      item.chart.zoomed = false;
      item.chart.zoomNote.hidden = true;
      item.chart.xLabel = mode;
      item.chart.tables = [this.store.table(key, mode)];
      item.chart.build();
    }
  }

  setLog(log) {
    this.log = log;
    for (const item of this.charts.values()) item.chart.setLog(log);
  }
}

/** The key list of a page with more keys than MAX_CHARTS (the job page, the system page, the compare page): a
 * search box, at most PICKER_ROWS matching keys with a checkbox each (checked: charted), and a line saying how
 * many keys there are and how many are charted. `owner` holds the keys: `known` (a Set of every key to list),
 * `picked` (a Set of the charted ones), `add(key)` (charts one more; false when MAX_CHARTS are charted already)
 * and `remove(key)` (removes its chart). JobCharts is one; compare.js has another. The owner calls render()
 * when its keys change. */
export class KeyPicker {
  constructor(owner) {
    this.charts = owner;
    this.search = el("input", { type: "search", id: "key-search", placeholder: "Search keys", "aria-label": "search metric keys" });
    this.count = el("span", { class: "muted", id: "key-count" });
    this.list = el("ul", { class: "key-list", id: "key-list" });
    this.more = el("p", { class: "muted small", id: "key-more", hidden: true });
    this.root = el(
      "details",
      { class: "key-picker", id: "key-picker", open: true },
      el("summary", { text: "Metric keys" }),
      el("div", { class: "toolbar" }, el("label", { class: "grow" }, "Search ", this.search), this.count),
      this.list,
      this.more,
    );
    let timer = null;
    this.search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.render(), 150);
    });
    this.frame = null;
  }

  /** Lists the keys matching the search (re-rendered at most once a frame). */
  render() {
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.draw();
    });
  }

  draw() {
    const charts = this.charts;
    const needle = this.search.value.trim().toLowerCase();
    const keys = [...charts.known].sort();
    const matching = needle ? keys.filter((k) => k.toLowerCase().includes(needle)) : keys;
    const shown = matching.slice(0, PICKER_ROWS);
    this.list.replaceChildren(
      ...shown.map((key) => {
        const box = el("input", { type: "checkbox", value: key, checked: charts.picked.has(key) });
        box.addEventListener("change", () => {
          if (!box.checked) charts.remove(key);
          else if (!charts.add(key)) {
            box.checked = false;
            this.tell(`At most ${MAX_CHARTS} charts at once: uncheck a key first.`);
            return;
          }
          this.tell("");
        });
        return el("li", { "data-key": key }, el("label", {}, box, el("span", { text: key })));
      }),
    );
    this.more.hidden = matching.length <= shown.length;
    this.more.textContent = `${matching.length - shown.length} more keys match: narrow the search to see them.`;
    this.tell(this.message || "");
  }

  /** The count line, with `message` after it. */
  tell(message) {
    this.message = message;
    const charts = this.charts;
    const base = `${charts.known.size} keys, ${charts.picked.size} charted (at most ${MAX_CHARTS} at once).`;
    this.count.textContent = message ? `${base} ${message}` : base;
  }
}
