// One job: status, spec, live charts of every metric key (grouped by prefix; past MAX_CHARTS keys, a key picker
// chooses the charted ones), logs following live, epoch summaries, MLflow and artifact links, and a cancel
// button. The charts load bucketed series first, then follow /api/jobs/{id}/events from the series' last
// sequence, so each point is shown exactly once.

import { JobCharts, KEYS_CHANGED, SeriesStore, withAddressKeys } from "./charts.js";
import {
  ApiError,
  LIVE_CHANGED,
  TERMINAL,
  api,
  el,
  flatten,
  formatDuration,
  formatSpecValue,
  isUnsetSpecValue,
  formatTime,
  formatValue,
  followJob,
  header,
  jobDuration,
  jobName,
  loadJob,
  renderError,
  safeUrl,
  showBanner,
  showJobStatus,
  statusBadge,
} from "./common.js";

const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
const MAX_LOG_ROWS = 5000;
const main = document.getElementById("main");
const jobId = decodeURIComponent(location.pathname.split("/")[2] || "");

let job = null;
let detail = null;
let charts = null;
const logs = { seen: new Set(), records: [], minLevel: "INFO", follow: true };
const summaries = new Map();
const timeline = [];

// --- header -----------------------------------------------------------------------------------------------

const title = el("h1", { id: "job-title" });
const statusHolder = el("span", { id: "job-status" });
const facts = el("dl", { class: "facts" });
const errorLine = el("p", { class: "error-text", id: "job-error", hidden: true });
const cancelButton = el("button", { type: "button", id: "cancel-job", class: "button danger", text: "Cancel job" });
const cancelNote = el("span", { class: "muted", id: "cancel-note" });

/** Sets a node's text only when it changes: the head is drawn again every second while the job runs, and text a
 * user has selected there (to copy the job id or the error) stays selected. */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function renderHead() {
  setText(title, jobName(job));
  showJobStatus(statusHolder, job.status);
  document.title = `${jobName(job)} · Training platform`;
  document.body.dataset.status = job.status;
  const rows = [
    ["Job id", job.job_id],
    ["Framework", job.framework],
    ["Model", job.model],
    ["Dataset", job.dataset],
    ["Created", formatTime(job.created_at)],
    ["Started", formatTime(job.started_at)],
    ["Ended", formatTime(job.ended_at)],
    ["Duration", formatDuration(jobDuration(job))],
  ];
  if (facts.children.length !== rows.length * 2) {
    facts.replaceChildren(...rows.flatMap(([k]) => [el("dt", { text: k }), el("dd")]));
  }
  rows.forEach(([, v], i) => setText(facts.children[i * 2 + 1], String(v || "—")));
  errorLine.hidden = !job.error_message;
  setText(errorLine, job.error_message || "");
  const terminal = TERMINAL.has(job.status);
  cancelButton.hidden = terminal;
  if (terminal) cancelNote.textContent = "";
}

/** Reads the job again (status, times, timeline, links) and redraws its head: when its stream ends, and after a
 * failed cancel (refused because the job had ended, which the page may not have heard of yet, or whose answer was
 * lost, so that only the job tells whether it was cancelled). Returns whether the job could be read. */
async function reloadJob() {
  let read = false;
  try {
    const fresh = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
    job = fresh.job;
    detail = fresh;
    for (const event of fresh.status_events || []) addStatusEvent(event);
    linksHolder.replaceChildren(linksCard());
    read = true;
  } catch {
    // What the page knows is kept.
  }
  renderHead();
  return read;
}

// The first click arms the button ("Click again to cancel") for 5 s and a second click confirms; a click sooner
// than CONFIRM_AFTER_MS after arming is ignored, so the second click of a double-click does not confirm.
const CONFIRM_AFTER_MS = 500;
let confirmTimer = null;
let armedAt = 0;
cancelButton.addEventListener("click", async () => {
  if (!cancelButton.classList.contains("confirm")) {
    cancelButton.classList.add("confirm");
    cancelButton.textContent = "Click again to cancel";
    armedAt = performance.now();
    confirmTimer = setTimeout(() => {
      cancelButton.classList.remove("confirm");
      cancelButton.textContent = "Cancel job";
    }, 5000);
    return;
  }
  if (performance.now() - armedAt < CONFIRM_AFTER_MS) return;
  clearTimeout(confirmTimer);
  cancelButton.disabled = true;
  cancelButton.textContent = "Cancelling…";
  try {
    const answer = await api(`/api/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST", body: {} });
    job = { ...job, ...answer.job };
    cancelNote.textContent = "Cancel requested.";
    renderHead();
  } catch (error) {
    // Refused (409: the job ended meanwhile, which the page may not have heard yet) or never answered (the
    // dashboard unreachable: the cancel may have reached the backend or not): show the job as it is now.
    const reason = error instanceof ApiError ? error.message : `the dashboard did not answer (${error.message})`;
    const read = await reloadJob();
    cancelNote.textContent = read
      ? `Cancel failed: ${reason}. The job was read again: it is ${job.status}.`
      : `Cancel failed: ${reason}. The job could not be read again: its status shown is the last known.`;
  } finally {
    cancelButton.disabled = false;
    cancelButton.classList.remove("confirm");
    cancelButton.textContent = "Cancel job";
  }
});

// --- status timeline, spec, links ---------------------------------------------------------------------------

const timelineList = el("ol", { class: "timeline", id: "status-timeline" });

function addStatusEvent(event) {
  if (timeline.some((e) => e.status === event.status && e.at === event.at)) return false;
  timeline.push(event);
  timeline.sort((a, b) => String(a.at).localeCompare(String(b.at)));
  timelineList.replaceChildren(
    ...timeline.map((e) =>
      el(
        "li",
        {},
        statusBadge(e.status),
        el("time", { text: formatTime(e.at) }),
        e.message ? el("span", { class: "timeline-message", text: e.message }) : null,
      ),
    ),
  );
  return true;
}

/** The spec as path/value rows; fields left unset are hidden until asked for. */
function specTable(spec) {
  const rows = flatten(spec);
  if (rows.length === 0) return el("p", { class: "muted", text: "No spec." });
  const showUnset = el("input", { type: "checkbox", id: "spec-unset" });
  const unset = rows.filter(([key, value]) => isUnsetSpecValue(key, value)).length;
  const table = el(
    "table",
    { class: "kv", id: "spec-table" },
    el(
      "tbody",
      {},
      rows.map(([key, value]) =>
        el(
          "tr",
          { class: isUnsetSpecValue(key, value) ? "unset" : "", hidden: isUnsetSpecValue(key, value) },
          el("th", { scope: "row", text: key }),
          el("td", { text: formatSpecValue(value, key) }),
        ),
      ),
    ),
  );
  showUnset.addEventListener("change", () => {
    for (const tr of table.querySelectorAll("tr.unset")) tr.hidden = !showUnset.checked;
  });
  return el(
    "div",
    {},
    unset ? el("div", { class: "toolbar" }, el("label", {}, showUnset, ` show ${unset} unset fields`)) : null,
    table,
  );
}

function linkOrText(label, url) {
  const href = safeUrl(url);
  if (href) return el("a", { href, target: "_blank", rel: "noopener noreferrer", text: label });
  return el("span", { text: label });
}

function linksCard() {
  const items = [];
  const mlflow = detail.mlflow;
  if (mlflow && (mlflow.run_url || mlflow.run_id)) {
    items.push(
      el(
        "li",
        {},
        el("span", { class: "muted", text: "MLflow run " }),
        mlflow.run_url ? linkOrText(mlflow.run_id || mlflow.run_url, mlflow.run_url) : el("span", { text: mlflow.run_id }),
      ),
    );
  } else if (job.mlflow_run_url) {
    items.push(el("li", {}, el("span", { class: "muted", text: "MLflow run " }), linkOrText(job.mlflow_run_url, job.mlflow_run_url)));
  }
  for (const artifact of detail.artifacts || []) {
    const uri = String(artifact.uri || "");
    items.push(
      el(
        "li",
        {},
        linkOrText(artifact.name || uri, uri),
        safeUrl(uri) ? null : el("span", { class: "muted small uri", text: ` ${uri}` }),
      ),
    );
  }
  if (items.length === 0) items.push(el("li", { class: "muted", text: "No MLflow run or artifacts yet." }));
  return el("ul", { class: "links", id: "job-links" }, items);
}

// --- epoch summaries ----------------------------------------------------------------------------------------

const summaryHolder = el("div", { class: "table-wrap", id: "epoch-summaries" });

function renderSummaries() {
  const rows = [...summaries.values()].sort((a, b) => a.epoch - b.epoch);
  if (rows.length === 0) {
    summaryHolder.replaceChildren(el("p", { class: "muted", text: "No epoch has finished yet." }));
    return;
  }
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r.metrics || {})))].sort();
  summaryHolder.replaceChildren(
    el(
      "table",
      { class: "numbers" },
      el(
        "thead",
        {},
        el("tr", {}, el("th", { text: "epoch" }), keys.map((k) => el("th", { text: k })), el("th", { text: "time" })),
      ),
      el(
        "tbody",
        {},
        rows.map((r) =>
          el(
            "tr",
            { "data-epoch": String(r.epoch) },
            el("td", { text: String(r.epoch) }),
            keys.map((k) => el("td", { text: formatValue(r.metrics?.[k]) })),
            el("td", {
              text:
                r.start_time && r.end_time
                  ? formatDuration((Date.parse(r.end_time) - Date.parse(r.start_time)) / 1000)
                  : "—",
            }),
          ),
        ),
      ),
    ),
  );
}

// --- logs ---------------------------------------------------------------------------------------------------

const levelSelect = el(
  "select",
  { id: "log-level", name: "level" },
  LEVELS.map((l) => el("option", { value: l, text: `${l} and above` })),
);
levelSelect.value = logs.minLevel;
const followBox = el("input", { type: "checkbox", id: "log-follow", checked: true });
const logList = el("ol", { class: "logs", id: "logs", "aria-live": "off" });
const logCount = el("span", { class: "muted", id: "log-count" });

function levelRank(level) {
  const i = LEVELS.indexOf(String(level || "INFO").toUpperCase());
  return i < 0 ? 1 : i;
}

/** A record's wall_time (seconds since the Unix epoch, or ISO 8601) as a local time of day. */
function wallClock(wallTime) {
  if (wallTime === null || wallTime === undefined || wallTime === "") return "";
  const date = typeof wallTime === "number" ? new Date(wallTime * 1000) : new Date(wallTime);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString();
}

function logRow(r) {
  return el(
    "li",
    { class: `log level-${String(r.level || "INFO").toLowerCase()}`, "data-sequence": String(r.sequence) },
    el("time", { text: wallClock(r.wall_time) }),
    el("span", { class: "log-level", text: r.level || "" }),
    el("span", { class: "log-message", text: r.message ?? "" }),
  );
}

function renderLogs() {
  const min = levelRank(logs.minLevel);
  const shown = logs.records.filter((r) => levelRank(r.level) >= min).slice(-MAX_LOG_ROWS);
  logList.replaceChildren(...shown.map(logRow));
  logCount.textContent = `${shown.length} of ${logs.records.length} lines`;
  if (logs.follow) logList.scrollTop = logList.scrollHeight;
}

function addLogs(records) {
  const min = levelRank(logs.minLevel);
  let added = 0;
  for (const r of records) {
    if (logs.seen.has(r.sequence)) continue;
    logs.seen.add(r.sequence);
    logs.records.push(r);
    if (levelRank(r.level) >= min) {
      logList.append(logRow(r));
      added += 1;
    }
  }
  while (logList.childElementCount > MAX_LOG_ROWS) logList.firstElementChild.remove();
  const shown = logList.childElementCount;
  logCount.textContent = `${shown} of ${logs.records.length} lines`;
  if (added && logs.follow) logList.scrollTop = logList.scrollHeight;
}

levelSelect.addEventListener("change", () => {
  logs.minLevel = levelSelect.value;
  renderLogs();
});
followBox.addEventListener("change", () => {
  logs.follow = followBox.checked;
  if (logs.follow) logList.scrollTop = logList.scrollHeight;
});
logList.addEventListener("scroll", () => {
  // Scrolling up stops following; scrolling back to the bottom resumes.
  const atBottom = logList.scrollHeight - logList.scrollTop - logList.clientHeight < 8;
  if (logs.follow !== atBottom) {
    logs.follow = atBottom;
    followBox.checked = atBottom;
  }
});

// --- live events --------------------------------------------------------------------------------------------

// The status shown is marked as the last known while the live stream is lost, and unmarked once it is back.
window.addEventListener(LIVE_CHANGED, () => {
  if (job) renderHead();
});

function follow(lastSequence) {
  followJob(jobId, `m${lastSequence}`, {
    metrics: (e) => charts.append(JSON.parse(e.data).points || []),
    logs: (e) => addLogs(JSON.parse(e.data).records || []),
    status: (e) => {
      const event = JSON.parse(e.data);
      addStatusEvent(event);
      if (event.status && event.status !== job.status) {
        job = { ...job, status: event.status };
        if (event.status === "RUNNING" && !job.started_at) job.started_at = event.at;
        if (TERMINAL.has(event.status)) job.ended_at = job.ended_at || event.at;
        renderHead();
      }
    },
    epoch_summary: (e) => {
      const summary = JSON.parse(e.data);
      summaries.set(summary.epoch, summary);
      renderSummaries();
    },
    end: async (e) => {
      const status = JSON.parse(e.data).status;
      if (status) job = { ...job, status };
      await reloadJob(); // the stream's status is enough when the job cannot be read
    },
  });
}

// --- page ---------------------------------------------------------------------------------------------------

const linksHolder = el("div", {});

function toolbarForCharts() {
  const xSelect = el(
    "select",
    { id: "x-axis", name: "x" },
    el("option", { value: "step", text: "step" }),
    el("option", { value: "epoch", text: "epoch" }),
  );
  const logBox = el("input", { type: "checkbox", id: "log-scale" });
  xSelect.addEventListener("change", () => charts.setXMode(xSelect.value));
  logBox.addEventListener("change", () => charts.setLog(logBox.checked));
  return el(
    "div",
    { class: "toolbar" },
    el("label", {}, "x axis ", xSelect),
    el("label", {}, logBox, " log scale"),
    el("span", { class: "muted small", text: "Drag across a chart to zoom; double-click to reset." }),
  );
}

async function start() {
  header("jobs");
  if (!jobId) {
    renderError(main, new Error("No job id in the address."));
    return;
  }
  detail = await loadJob(jobId, main);
  if (detail === null) return;
  job = detail.job;
  for (const event of detail.status_events || []) addStatusEvent(event);
  for (const summary of detail.epoch_summaries || []) summaries.set(summary.epoch, summary);
  linksHolder.replaceChildren(linksCard());

  const chartBox = el("div", { id: "charts", class: "charts" });
  // The compare page opens with the keys picked here (they are in this page's address as they change).
  const compareHref = () => withAddressKeys(`/compare?jobs=${encodeURIComponent(jobId)}`);
  const compareLink = el("a", { class: "button", href: compareHref(), text: "Compare…" });
  window.addEventListener(KEYS_CHANGED, () => (compareLink.href = compareHref()));
  main.replaceChildren(
    el(
      "div",
      { class: "page-head" },
      el("div", {}, el("div", { class: "title-row" }, title, statusHolder)),
      el(
        "div",
        { class: "actions" },
        el("a", { class: "button", href: `/jobs/${encodeURIComponent(jobId)}/system`, text: "System metrics" }),
        compareLink,
        cancelButton,
        cancelNote,
      ),
    ),
    errorLine,
    el(
      "div",
      { class: "cards" },
      el("section", { class: "card" }, el("h2", { text: "Job" }), facts),
      el("section", { class: "card" }, el("h2", { text: "Status timeline" }), timelineList),
      el("section", { class: "card" }, el("h2", { text: "MLflow and artifacts" }), linksHolder),
    ),
    el(
      "section",
      { class: "panel" },
      el("h2", { text: "Metrics" }),
      toolbarForCharts(),
      chartBox,
      el("p", { class: "muted small", id: "system-note" }),
    ),
    el("section", { class: "panel" }, el("h2", { text: "Epoch summaries" }), summaryHolder),
    el(
      "section",
      { class: "panel" },
      el("h2", { text: "Logs" }),
      el(
        "div",
        { class: "toolbar" },
        el("label", {}, "Level ", levelSelect),
        el("label", {}, followBox, " follow"),
        logCount,
      ),
      logList,
    ),
    el("section", { class: "panel" }, el("details", { open: true }, el("summary", { text: "Spec (advanced_config included)" }), specTable(detail.spec || {}))),
  );
  renderHead();
  renderSummaries();
  renderLogs();

  const store = new SeriesStore(jobId);
  charts = new JobCharts(chartBox, store, { filter: (key) => !key.startsWith("system/") });
  let lastSequence = 0;
  try {
    await charts.load();
    lastSequence = store.lastSequence;
  } catch (error) {
    showBanner(`Could not load the metrics: ${error.message}`);
  }
  const systemKeys = charts.listed.filter((k) => k.startsWith("system/")).length;
  const note = document.getElementById("system-note");
  if (systemKeys) note.textContent = `${systemKeys} system/ metrics are on the System metrics page.`;
  follow(lastSequence);
  setInterval(() => {
    if (job && !TERMINAL.has(job.status)) renderHead();
  }, 1000);
}

start();
