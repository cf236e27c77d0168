// Compare: pick several jobs, overlay the same metric keys (one line and min/max band per job), and see the
// specs side by side with the differences marked. Running jobs keep drawing live. Jobs with more than MAX_CHARTS
// keys together: a key picker (the job page's) lists every key and charts the picked ones, the first MAX_CHARTS in
// key order to start with, and the page says so. The picked keys are in the address (`key` parameters, as on the
// job page): a reload or a shared link charts the same keys, and so does the page "Compare selected" opens.

import {
  KeyPicker,
  MAX_CHARTS,
  MetricChart,
  SeriesStore,
  keysFromAddress,
  keysToAddress,
  maxPointsFor,
  prefixOf,
  withAddressKeys,
} from "./charts.js";
import {
  TERMINAL,
  api,
  el,
  endWithSession,
  flatten,
  formatAge,
  formatSpecValue,
  header,
  jobName,
  renderError,
  showBanner,
  showLiveState,
  statusBadge,
  streamRetry,
} from "./common.js";

const main = document.getElementById("main");
const selected = (new URLSearchParams(location.search).get("jobs") || "")
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
const chosen = new Set(selected);

/** The jobs to pick from: /api/jobs's newest page, older pages on "Load more" (`next`: their page token). */
function picker(first) {
  const jobs = [...first.jobs];
  let next = first.next_page_token || "";
  const button = el("button", { type: "button", class: "button primary", id: "compare-apply", text: "Compare selected" });
  button.addEventListener("click", () => {
    location.href = withAddressKeys(`/compare?jobs=${[...chosen].map(encodeURIComponent).join(",")}`);
  });
  const row = (job) => {
    const box = el("input", { type: "checkbox", value: job.job_id, "aria-label": `compare ${jobName(job)}`, checked: chosen.has(job.job_id) });
    box.addEventListener("change", () => (box.checked ? chosen.add(job.job_id) : chosen.delete(job.job_id)));
    return el(
      "tr",
      { "data-job-id": job.job_id },
      el("td", {}, box),
      el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(job.job_id)}`, text: jobName(job) })),
      el("td", {}, statusBadge(job.status)),
      el("td", { text: job.framework || "—" }),
      el("td", { text: job.model || "—" }),
      el("td", { text: job.dataset || "—" }),
      el("td", { class: "muted", text: formatAge(job.created_at) }),
    );
  };
  const tbody = el("tbody", {}, jobs.map(row));
  const summary = el("summary", { id: "compare-picker-count" });
  const more = el("button", { type: "button", class: "button", id: "compare-load-more", text: "Load more" });
  const counted = () => {
    // Cut for size: the count says so, and "Load more" brings the older jobs.
    summary.textContent = next ? `Pick jobs (showing the newest ${jobs.length}; older ones not loaded)` : `Pick jobs (${jobs.length})`;
    more.hidden = !next;
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const answer = await api(`/api/jobs?page_token=${encodeURIComponent(next)}`);
      const known = new Set(jobs.map((j) => j.job_id));
      const fresh = answer.jobs.filter((j) => !known.has(j.job_id));
      jobs.push(...fresh);
      tbody.append(...fresh.map(row));
      next = answer.next_page_token || "";
      counted();
    } catch (error) {
      more.textContent = `Load more (failed: ${error.message})`;
    } finally {
      more.disabled = false;
    }
  });
  counted();
  return el(
    "details",
    { class: "panel", open: selected.length < 2 },
    summary,
    el(
      "div",
      { class: "table-wrap picker" },
      el(
        "table",
        { id: "compare-picker" },
        el("thead", {}, el("tr", {}, ["", "Name", "Status", "Framework", "Model", "Dataset", "Age"].map((h) => el("th", { text: h })))),
        tbody,
      ),
    ),
    el("div", { class: "toolbar" }, more, button),
  );
}

function labels(jobs) {
  const counts = new Map();
  for (const j of jobs) counts.set(jobName(j), (counts.get(jobName(j)) || 0) + 1);
  return jobs.map((j) => (counts.get(jobName(j)) > 1 ? `${jobName(j)} (${j.job_id.slice(0, 8)})` : jobName(j)));
}

function specComparison(details, names) {
  const flat = details.map((d) => new Map(flatten({ framework: d.job.framework, ...(d.spec || {}) })));
  const paths = [...new Set(flat.flatMap((m) => [...m.keys()]))].sort();
  const onlyDiff = el("input", { type: "checkbox", id: "only-differences" });
  let differing = 0;
  const rows = paths.map((path) => {
    const values = flat.map((m) => (m.has(path) ? JSON.stringify(m.get(path)) : undefined));
    const differs = new Set(values).size > 1;
    if (differs) differing += 1;
    return el(
      "tr",
      { class: differs ? "differs" : "", "data-path": path },
      el("th", { scope: "row", text: path }),
      flat.map((m) => el("td", { class: differs ? "diff" : "", text: m.has(path) ? formatSpecValue(m.get(path), path) : "—" })),
    );
  });
  const table = el(
    "table",
    { class: "spec-compare", id: "spec-compare" },
    el("thead", {}, el("tr", {}, el("th", { text: "spec" }), names.map((n) => el("th", { text: n })))),
    el("tbody", {}, rows),
  );
  onlyDiff.addEventListener("change", () => {
    for (const tr of table.tBodies[0].rows) tr.hidden = onlyDiff.checked && !tr.classList.contains("differs");
  });
  return el(
    "section",
    { class: "panel" },
    el("h2", { text: "Specs" }),
    el(
      "div",
      { class: "toolbar" },
      el("span", { class: "muted", id: "diff-count", text: `${differing} of ${paths.length} settings differ (marked ≠)` }),
      el("label", {}, onlyDiff, " only differences"),
    ),
    el("div", { class: "table-wrap" }, table),
  );
}

async function compare(jobsBox) {
  const details = await Promise.all(selected.map((id) => api(`/api/jobs/${encodeURIComponent(id)}`)));
  const jobs = details.map((d) => d.job);
  const names = labels(jobs);
  const stores = selected.map((id) => new SeriesStore(id));
  const width = maxPointsFor(jobsBox.clientWidth / 2);
  // The key lists first (one bucket per key): past MAX_CHARTS keys, those the address picks (else the first
  // MAX_CHARTS) are charted and a key picker chooses others; only the charted keys' series are read and followed.
  const lists = await Promise.all(stores.map((s) => s.fetch({ maxPoints: 1 })));
  const has = lists.map((l) => new Set(l.series.map((x) => x.key)));
  const every = [...new Set(has.flatMap((h) => [...h]))].filter((k) => !k.startsWith("system/")).sort();
  const cut = every.length > MAX_CHARTS;
  const fromAddress = cut ? keysFromAddress(new Set(every)) : null;
  const keys = fromAddress || every.slice(0, MAX_CHARTS);
  if (cut) for (const s of stores) s.tracked = new Set(keys);
  // Every key unchecked (an empty `key` in the address): no series to read (asking for none would read every key);
  // live points follow each job's key list.
  await Promise.all(
    stores.map((s, i) => {
      if (!cut) return s.load(width);
      if (keys.length) return s.load(width, keys);
      s.lastSequence = lists[i].last_sequence || 0;
      return null;
    }),
  );
  let xMode = "step";
  let log = false;
  const charts = new Map(); // key -> {chart, zoom}
  const dirty = new Set(); // keys with live points not drawn yet
  const chartBox = el("div", { class: "charts", id: "compare-charts" });
  const notes = lists.map((l) => l.message).filter(Boolean);
  if (cut) {
    const start = !fromAddress
      ? `the first ${keys.length} in key order`
      : keys.length
        ? `the ${keys.length} keys the address names`
        : "none: the address names no key";
    notes.push(
      `These jobs have ${every.length} metric keys: at most ${MAX_CHARTS} are charted at once (${start} to start ` +
        "with); the key picker below chooses which.",
    );
  }
  for (const text of notes) chartBox.append(el("p", { class: "banner warning compare-keys-note", text }));
  const sections = new Map(); // prefix -> its <section>, whose `grid` holds the charts
  const sectionFor = (prefix) => {
    let section = sections.get(prefix);
    if (!section) {
      const grid = el("div", { class: "chart-grid" });
      section = el("section", { class: "chart-section", "data-prefix": prefix }, el("h3", { text: `${prefix}/` }), grid);
      section.grid = grid;
      const later = [...sections.keys()].filter((p) => p > prefix).sort()[0];
      chartBox.insertBefore(section, later ? sections.get(later) : null);
      sections.set(prefix, section);
    }
    return section;
  };
  const tablesFor = (key, zoom = null) =>
    stores.map((s, i) => (zoom ? s.table(key, xMode, zoom[i].buckets, zoom[i].base) : s.table(key, xMode)));
  /** Draws a key's chart again from the stores (its zoomed range while zoomed). */
  const draw = (key, options = {}) => {
    const item = charts.get(key);
    if (!item) return;
    const tables = tablesFor(key, item.zoom);
    item.chart.setTables(tables, options);
    item.chart.root.dataset.linePoints = tables.map((t) => t[0].length).join(",");
    item.chart.root.dataset.jobs = String(has.filter((h) => h.has(key)).length);
  };
  /** A chart for `key` (one line per job), in key order within its prefix's section. */
  const addChart = (key) => {
    const section = sectionFor(prefixOf(key));
    const item = { zoom: null };
    item.chart = new MetricChart(section.grid, {
      title: key,
      xLabel: xMode,
      log,
      lines: names.map((n) => ({ label: n })),
      onZoom: async (min, max) => {
        const answers = await Promise.all(
          stores.map((s) =>
            s.fetch({ keys: [key], maxPoints: width, minStep: s.stepOf(min, xMode, false), maxStep: s.stepOf(max, xMode, true) }),
          ),
        );
        item.zoom = answers.map((a) => ({ buckets: a.series.find((x) => x.key === key)?.buckets || [], base: a.last_sequence || 0 }));
        draw(key, { keepScale: true });
      },
      onReset: () => {
        item.zoom = null;
        draw(key, { keepScale: false });
      },
    });
    const next = [...section.grid.children].find((n) => n !== item.chart.root && n.dataset.key > key);
    if (next) section.grid.insertBefore(item.chart.root, next);
    charts.set(key, item);
    return item;
  };
  if (cut) {
    // The key picker (charts.js's, as on the job page): checking a key reads its series for every job and charts
    // it; unchecking removes its chart and stops keeping its points.
    const owner = {
      known: new Set(every),
      picked: new Set(keys),
      add(key) {
        if (this.picked.has(key)) return true;
        if (this.picked.size >= MAX_CHARTS) return false;
        this.picked.add(key);
        keysToAddress(this.picked);
        for (const s of stores) s.tracked.add(key);
        addChart(key);
        Promise.all(stores.map((s) => s.rebucket(key, width)))
          .then(() => {
            if (this.picked.has(key)) draw(key);
            else for (const s of stores) s.keys.delete(key); // unchecked meanwhile
          })
          .catch((error) => showBanner(`Could not load ${key}: ${error.message}`));
        return true;
      },
      remove(key) {
        this.picked.delete(key);
        keysToAddress(this.picked);
        dirty.delete(key);
        for (const s of stores) {
          s.tracked.delete(key);
          s.keys.delete(key);
        }
        const item = charts.get(key);
        if (!item) return;
        item.chart.destroy();
        charts.delete(key);
        const prefix = prefixOf(key);
        const section = sections.get(prefix);
        if (section && section.grid.childElementCount === 0) {
          section.remove();
          sections.delete(prefix);
        }
      },
    };
    const keyPicker = new KeyPicker(owner);
    chartBox.append(keyPicker.root);
    keyPicker.render();
  }
  for (const key of keys) {
    addChart(key);
    draw(key);
  }
  const noMetrics = el("p", { class: "muted", text: "These jobs have no metrics yet." });
  if (every.length === 0) chartBox.append(noMetrics);

  // Live: running jobs keep appending (only the charted keys' points, past MAX_CHARTS keys). A key a job logs
  // after the page opened (its validation metrics, at the end of its first epoch) gets its chart then, while fewer
  // than MAX_CHARTS are charted; past that, or with the key picker, it is not charted (a reload lists it).
  let frame = null;
  const redraw = () => {
    frame = null;
    for (const key of dirty) {
      if (!charts.has(key) && !cut && !key.startsWith("system/") && charts.size < MAX_CHARTS) {
        noMetrics.remove();
        addChart(key);
      }
      draw(key);
    }
    dirty.clear();
  };
  // A stream the browser gave up on (a restarted dashboard's 401, a proxy's 502) is opened again after the last
  // event it received, unless the session has ended.
  stores.forEach((store, i) => {
    if (TERMINAL.has(jobs[i].status)) return;
    let cursor = `m${store.lastSequence}`;
    let source = null;
    let stopped = false;
    const retry = streamRetry(open, {
      wanted: () => !stopped && source === null,
      onSessionEnded: () => {
        stopped = true;
      },
    });
    const stop = () => {
      stopped = true;
      retry.cancel();
      if (source !== null) source.close();
    };
    function open() {
      const events = new EventSource(`/api/jobs/${encodeURIComponent(store.jobId)}/events?after=${encodeURIComponent(cursor)}`);
      source = events;
      endWithSession(events);
      events.addEventListener("session_ended", stop);
      showLiveState(events);
      events.addEventListener("open", () => retry.opened());
      events.addEventListener("metrics", (e) => {
        if (e.lastEventId) cursor = e.lastEventId;
        for (const key of store.append(JSON.parse(e.data).points || [])) {
          has[i].add(key);
          dirty.add(key);
        }
        if (frame === null) frame = requestAnimationFrame(redraw);
      });
      events.addEventListener("end", stop);
      events.addEventListener("error", (e) => {
        if (events !== source || stopped) return;
        if (e.data) {
          stop(); // refused by the server: say why
          let message = "the live stream was refused";
          try {
            message = JSON.parse(e.data).error.message || message;
          } catch {
            // keep the generic message
          }
          showBanner(`Live updates of ${jobName(jobs[i])} stopped: ${message}`);
          return;
        }
        if (events.readyState !== EventSource.CLOSED) return; // a dropped connection reconnects by itself
        source = null;
        showBanner(`Live updates of ${jobName(jobs[i])} interrupted; trying again in ${retry.later()} s…`, "warning");
      });
    }
    open();
  });

  const xSelect = el(
    "select",
    { id: "x-axis" },
    el("option", { value: "step", text: "step" }),
    el("option", { value: "epoch", text: "epoch" }),
  );
  const logBox = el("input", { type: "checkbox", id: "log-scale" });
  xSelect.addEventListener("change", () => {
    xMode = xSelect.value;
    for (const [key, item] of charts) {
      item.zoom = null;
      item.chart.zoomed = false;
      item.chart.xLabel = xMode;
      item.chart.tables = tablesFor(key);
      item.chart.build();
      item.chart.root.dataset.linePoints = item.chart.tables.map((t) => t[0].length).join(",");
    }
  });
  logBox.addEventListener("change", () => {
    log = logBox.checked;
    for (const item of charts.values()) item.chart.setLog(log);
  });
  jobsBox.append(
    el(
      "section",
      { class: "panel" },
      el("h2", { text: "Metrics" }),
      el(
        "div",
        { class: "toolbar" },
        el("label", {}, "x axis ", xSelect),
        el("label", {}, logBox, " log scale"),
        el("span", { class: "muted small", text: "Drag across a chart to zoom; double-click to reset." }),
      ),
      chartBox,
    ),
    specComparison(details, names),
  );
}

async function start() {
  header("compare");
  const content = el("div", { id: "compare" });
  main.replaceChildren(el("div", { class: "page-head" }, el("h1", { text: "Compare jobs" })), content);
  try {
    const list = await api("/api/jobs");
    content.append(picker(list));
    if (selected.length === 0) {
      content.append(el("p", { class: "muted", text: "Pick two or more jobs above." }));
      return;
    }
    await compare(content);
  } catch (error) {
    const box = el("div", {});
    content.append(box);
    renderError(box, error);
  }
}

start();
