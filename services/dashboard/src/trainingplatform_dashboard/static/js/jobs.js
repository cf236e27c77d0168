// The jobs page: every job, filters by status and framework, a search by name, statuses updating live from
// /api/events/jobs, and a selection to compare.

import {
  api,
  clearBanner,
  el,
  formatAge,
  formatDuration,
  formatValue,
  header,
  jobDuration,
  jobName,
  renderError,
  showBanner,
  statusBadge,
} from "./common.js";

const STATUSES = ["", "PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];
const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
const state = {
  status: params.get("status") || "",
  framework: params.get("framework") || "",
  q: params.get("q") || "",
  jobs: new Map(),
  selected: new Set(),
  frameworks: new Set(),
};

const statusSelect = el(
  "select",
  { id: "filter-status", name: "status" },
  STATUSES.map((s) => el("option", { value: s, text: s || "any status" })),
);
const frameworkSelect = el("select", { id: "filter-framework", name: "framework" }, el("option", { value: "", text: "any framework" }));
const search = el("input", { id: "filter-q", type: "search", name: "q", placeholder: "Search by name", value: state.q });
const compareButton = el("button", { type: "button", id: "compare-selected", class: "button", text: "Compare selected", disabled: true });
const count = el("span", { class: "muted", id: "job-count" });
const tbody = el("tbody", { id: "jobs-body" });
const table = el(
  "table",
  { class: "jobs", id: "jobs-table" },
  el(
    "thead",
    {},
    el(
      "tr",
      {},
      ["", "Name", "Status", "Framework", "Model", "Dataset", "Age", "Duration", "Latest metric"].map((h) =>
        el("th", { scope: "col", text: h }),
      ),
    ),
  ),
  tbody,
);

function matches(job) {
  if (state.status && job.status !== state.status) return false;
  if (state.framework && job.framework !== state.framework) return false;
  if (state.q) {
    const q = state.q.toLowerCase();
    if (!jobName(job).toLowerCase().includes(q) && !job.job_id.toLowerCase().includes(q)) return false;
  }
  return true;
}

function metricCell(job) {
  const m = job.latest_metric;
  if (!m) return el("td", { class: "muted", text: "—" });
  return el(
    "td",
    { class: "metric" },
    el("span", { class: "metric-key", text: m.key }),
    " ",
    el("span", { class: "metric-value", text: formatValue(m.value) }),
    m.step !== null && m.step !== undefined ? el("span", { class: "muted", text: ` @ ${m.step}` }) : null,
  );
}

function row(job) {
  const box = el("input", { type: "checkbox", "aria-label": `select ${jobName(job)}`, checked: state.selected.has(job.job_id) });
  box.addEventListener("change", () => {
    if (box.checked) state.selected.add(job.job_id);
    else state.selected.delete(job.job_id);
    compareButton.disabled = state.selected.size < 2;
  });
  const name = el(
    "td",
    { class: "name" },
    el("a", { href: `/jobs/${encodeURIComponent(job.job_id)}`, text: jobName(job) }),
    job.display_name ? el("div", { class: "muted small", text: job.job_id }) : null,
  );
  const tr = el(
    "tr",
    { "data-job-id": job.job_id, "data-status": job.status },
    el("td", {}, box),
    name,
    el("td", { class: "status-cell" }, statusBadge(job.status)),
    el("td", { text: job.framework || "—" }),
    el("td", { text: job.model || "—" }),
    el("td", { text: job.dataset || "—" }),
    el("td", { class: "age", text: formatAge(job.created_at) }),
    el("td", { class: "duration", text: formatDuration(jobDuration(job)) }),
    metricCell(job),
  );
  if (job.error_message) tr.title = job.error_message;
  return tr;
}

function addFramework(name) {
  if (!name || state.frameworks.has(name)) return;
  state.frameworks.add(name);
  const options = [...state.frameworks].sort();
  frameworkSelect.replaceChildren(
    el("option", { value: "", text: "any framework" }),
    options.map((f) => el("option", { value: f, text: f })),
  );
  frameworkSelect.value = state.framework;
}

function render() {
  const jobs = [...state.jobs.values()].filter(matches);
  jobs.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  tbody.replaceChildren(...jobs.map(row));
  if (jobs.length === 0) {
    tbody.append(el("tr", {}, el("td", { colspan: "9", class: "muted empty", text: "No jobs match." })));
  }
  count.textContent = `${jobs.length} job${jobs.length === 1 ? "" : "s"}`;
}

let frame = null;

/** A job from the event stream: a changed row is replaced in place; new or filtered rows re-render once a frame
 * (a reconnecting stream first sends every job). */
function upsert(job) {
  addFramework(job.framework);
  state.jobs.set(job.job_id, job);
  const existing = tbody.querySelector(`tr[data-job-id="${CSS.escape(job.job_id)}"]`);
  if (existing && matches(job)) {
    existing.replaceWith(row(job));
    return;
  }
  if (!existing && !matches(job)) return;
  if (frame === null) {
    frame = requestAnimationFrame(() => {
      frame = null;
      render();
    });
  }
}

async function load() {
  const query = new URLSearchParams();
  if (state.status) query.set("status", state.status);
  if (state.framework) query.set("framework", state.framework);
  if (state.q) query.set("q", state.q);
  history.replaceState(null, "", query.toString() ? `/?${query}` : "/");
  try {
    const answer = await api(`/api/jobs?${query}`);
    // The filtered answer replaces the jobs that match; jobs seen live stay known for later filter changes.
    for (const job of answer.jobs) {
      addFramework(job.framework);
      state.jobs.set(job.job_id, job);
    }
    clearBanner();
    render();
  } catch (error) {
    renderError(tbody, error);
  }
}

function follow() {
  const events = new EventSource("/api/events/jobs");
  events.addEventListener("job", (event) => upsert(JSON.parse(event.data)));
  events.addEventListener("open", () => {
    document.body.dataset.live = "true";
    clearBanner();
  });
  events.addEventListener("error", () => {
    document.body.dataset.live = "false";
    showBanner("Live updates interrupted; reconnecting…", "warning");
  });
}

let searchTimer = null;
statusSelect.value = state.status;
statusSelect.addEventListener("change", () => {
  state.status = statusSelect.value;
  load();
});
frameworkSelect.addEventListener("change", () => {
  state.framework = frameworkSelect.value;
  load();
});
search.addEventListener("input", () => {
  state.q = search.value.trim();
  render();
  clearTimeout(searchTimer);
  searchTimer = setTimeout(load, 250);
});
compareButton.addEventListener("click", () => {
  location.href = `/compare?jobs=${[...state.selected].map(encodeURIComponent).join(",")}`;
});
if (state.framework) addFramework(state.framework);

header("jobs");
main.replaceChildren(
  el(
    "div",
    { class: "page-head" },
    el("h1", { text: "Jobs" }),
    el("a", { class: "button primary", href: "/new", text: "New job" }),
  ),
  el(
    "div",
    { class: "toolbar" },
    el("label", {}, "Status ", statusSelect),
    el("label", {}, "Framework ", frameworkSelect),
    el("label", { class: "grow" }, "Search ", search),
    count,
    compareButton,
  ),
  el("div", { class: "table-wrap" }, table),
);
// Ages and running durations move on their own.
setInterval(() => {
  for (const tr of tbody.querySelectorAll("tr[data-job-id]")) {
    const job = state.jobs.get(tr.dataset.jobId);
    if (!job) continue;
    tr.querySelector(".age").textContent = formatAge(job.created_at);
    tr.querySelector(".duration").textContent = formatDuration(jobDuration(job));
  }
}, 1000);
load().then(follow);
