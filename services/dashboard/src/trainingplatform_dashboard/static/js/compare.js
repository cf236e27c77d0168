// Compare: pick several jobs, overlay the same metric keys (one line and min/max band per job), and see the
// specs side by side with the differences marked. Running jobs keep drawing live. Jobs with more than MAX_CHARTS
// keys together: the first MAX_CHARTS keys are compared, and the page says so.

import { MAX_CHARTS, MetricChart, SeriesStore, maxPointsFor, prefixOf } from "./charts.js";
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
    location.href = `/compare?jobs=${[...chosen].map(encodeURIComponent).join(",")}`;
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
      flat.map((m) => el("td", { class: differs ? "diff" : "", text: m.has(path) ? formatSpecValue(m.get(path)) : "—" })),
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
  // The key lists first (one bucket per key): past MAX_CHARTS keys, only the first MAX_CHARTS are compared.
  const lists = await Promise.all(stores.map((s) => s.fetch({ maxPoints: 1 })));
  const every = [...new Set(lists.flatMap((l) => l.series.map((x) => x.key)))].filter((k) => !k.startsWith("system/")).sort();
  const keys = every.slice(0, MAX_CHARTS);
  const cut = every.length > keys.length;
  if (cut) for (const s of stores) s.tracked = new Set(keys);
  await Promise.all(stores.map((s) => (cut ? s.load(width, keys) : s.load(width))));
  let xMode = "step";
  let log = false;
  const charts = new Map();
  const chartBox = el("div", { class: "charts", id: "compare-charts" });
  const notes = lists.map((l) => l.message).filter(Boolean);
  if (cut) {
    notes.push(
      `These jobs have ${every.length} metric keys: the first ${keys.length} in key order are compared (open a job to pick others).`,
    );
  }
  for (const text of notes) chartBox.append(el("p", { class: "banner warning compare-keys-note", text }));
  const sections = new Map();
  for (const key of keys) {
    const prefix = prefixOf(key);
    if (!sections.has(prefix)) {
      const grid = el("div", { class: "chart-grid" });
      chartBox.append(el("section", { class: "chart-section" }, el("h3", { text: `${prefix}/` }), grid));
      sections.set(prefix, grid);
    }
  }
  const tablesFor = (key, zoom = null) =>
    stores.map((s, i) => (zoom ? s.table(key, xMode, zoom[i].buckets, zoom[i].base) : s.table(key, xMode)));
  for (const key of keys) {
    const item = { zoom: null };
    item.chart = new MetricChart(sections.get(prefixOf(key)), {
      title: key,
      xLabel: xMode,
      lines: names.map((n) => ({ label: n })),
      onZoom: async (min, max) => {
        const answers = await Promise.all(
          stores.map((s) =>
            s.fetch({ keys: [key], maxPoints: width, minStep: s.stepOf(min, xMode, false), maxStep: s.stepOf(max, xMode, true) }),
          ),
        );
        item.zoom = answers.map((a) => ({ buckets: a.series.find((x) => x.key === key)?.buckets || [], base: a.last_sequence || 0 }));
        item.chart.setTables(tablesFor(key, item.zoom), { keepScale: true });
      },
      onReset: () => {
        item.zoom = null;
        item.chart.setTables(tablesFor(key), { keepScale: false });
      },
    });
    item.chart.root.dataset.jobs = String(stores.filter((s) => s.keys.has(key)).length);
    item.chart.setTables(tablesFor(key));
    charts.set(key, item);
  }
  if (keys.length === 0) chartBox.append(el("p", { class: "muted", text: "These jobs have no metrics yet." }));

  // Live: running jobs keep appending.
  const dirty = new Set();
  let frame = null;
  const redraw = () => {
    frame = null;
    for (const key of dirty) {
      const item = charts.get(key);
      if (item) item.chart.setTables(tablesFor(key, item.zoom));
    }
    dirty.clear();
  };
  stores.forEach((store, i) => {
    if (TERMINAL.has(jobs[i].status)) return;
    const events = new EventSource(`/api/jobs/${encodeURIComponent(store.jobId)}/events?after=m${store.lastSequence}`);
    endWithSession(events);
    showLiveState(events);
    events.addEventListener("metrics", (e) => {
      for (const key of store.append(JSON.parse(e.data).points || [])) dirty.add(key);
      if (frame === null) frame = requestAnimationFrame(redraw);
    });
    events.addEventListener("end", () => events.close());
    events.addEventListener("error", (e) => {
      if (!e.data) return; // a dropped connection reconnects by itself
      events.close(); // refused by the server: say why
      let message = "the live stream was refused";
      try {
        message = JSON.parse(e.data).error.message || message;
      } catch {
        // keep the generic message
      }
      showBanner(`Live updates of ${jobName(jobs[i])} stopped: ${message}`);
    });
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
