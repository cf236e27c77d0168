// The jobs page: every job, filters by status and framework, a search by name, statuses updating live from
// /api/events/jobs, and a selection to compare. /api/jobs answers a page at a time (the newest 500): older jobs
// come with "Load more", and a search or filter is answered by the server over every job, however old.

import {
  ApiError,
  api,
  clearBanner,
  el,
  endWithSession,
  formatAge,
  formatDuration,
  formatTime,
  formatValue,
  header,
  jobDuration,
  jobName,
  renderError,
  showBanner,
  statusBadge,
  streamRetry,
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
  next: "", // the page token of the older jobs of the current filters ("" once every job is loaded)
  oldest: "", // created_at of the oldest job loaded for the current filters
  loading: false,
  unreachable: null, // {since, message} while the backend is unreachable: the rows are the last known ones
};

/** Says that the rows are stale while the backend is unreachable (from the feed, or a failed load). */
function showStale() {
  document.body.dataset.stale = state.unreachable ? "true" : "false";
  if (!state.unreachable) return;
  const since = state.unreachable.since ? ` since ${formatTime(state.unreachable.since)}` : "";
  const why = state.unreachable.message ? ` (${state.unreachable.message})` : "";
  showBanner(
    `The backend is unreachable${since}${why}: the list shows what the dashboard last knew and updates again once it is back.`,
    "warning",
  );
}

const statusSelect = el(
  "select",
  { id: "filter-status", name: "status" },
  STATUSES.map((s) => el("option", { value: s, text: s || "any status" })),
);
const frameworkSelect = el("select", { id: "filter-framework", name: "framework" }, el("option", { value: "", text: "any framework" }));
const search = el("input", { id: "filter-q", type: "search", name: "q", placeholder: "Search by name", value: state.q });
const compareButton = el("button", { type: "button", id: "compare-selected", class: "button", text: "Compare selected", disabled: true });
const count = el("span", { class: "muted", id: "job-count" });
const moreButton = el("button", { type: "button", id: "load-more", class: "button", text: "Load more", hidden: true });
const moreNote = el("p", { class: "muted more-note", id: "more-note", hidden: true }, moreButton);
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
    const fields = [jobName(job), job.job_id, job.model || ""];
    if (!fields.some((f) => f.toLowerCase().includes(q))) return false;
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
    const text = state.next ? "No jobs match among the newest jobs; load more to look at older ones." : "No jobs match.";
    tbody.append(el("tr", {}, el("td", { colspan: "9", class: "muted empty", text })));
  }
  const plural = `job${jobs.length === 1 ? "" : "s"}`;
  // Cut for size: say so, with the way to the rest.
  count.textContent = state.next ? `Showing ${jobs.length} ${plural}, newest first; older ones not loaded` : `${jobs.length} ${plural}`;
  count.dataset.complete = state.next ? "false" : "true";
  moreButton.hidden = !state.next;
  moreNote.hidden = !state.next;
}

let frame = null;

/** A job from the event stream: a changed row is replaced in place; new or filtered rows re-render once a frame
 * (a reconnecting stream first sends every job). The stream also follows the jobs not ended that are older than
 * the pages loaded: such a job is shown once "Load more" (or a search) brings it, not before. */
function upsert(job) {
  if (!state.jobs.has(job.job_id) && state.next && String(job.created_at) < state.oldest) return;
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

function filters() {
  const query = new URLSearchParams();
  if (state.status) query.set("status", state.status);
  if (state.framework) query.set("framework", state.framework);
  if (state.q) query.set("q", state.q);
  return query;
}

let generation = 0;
let retryTimer = null;

/** The newest page of the current filters (`more`: the next older page instead). */
async function load(more = false) {
  const query = filters();
  if (!more) history.replaceState(null, "", query.toString() ? `/?${query}` : "/");
  if (more) query.set("page_token", state.next);
  const mine = ++generation;
  state.loading = true;
  moreButton.disabled = true;
  try {
    const answer = await api(`/api/jobs?${query}`);
    if (mine !== generation) return; // the filters changed meanwhile
    clearTimeout(retryTimer);
    state.next = answer.next_page_token || "";
    const created = answer.jobs.map((j) => String(j.created_at)).sort();
    if (created.length && (!more || created[0] < state.oldest)) state.oldest = created[0];
    // The filtered answer replaces the jobs that match; jobs seen live stay known for later filter changes.
    for (const job of answer.jobs) {
      addFramework(job.framework);
      state.jobs.set(job.job_id, job);
    }
    if (!state.unreachable) clearBanner();
    render();
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof ApiError && error.status < 500) {
      renderError(tbody, error);
      return;
    }
    // The backend (or the dashboard) is unreachable: keep what is shown, say it is stale, try again.
    if (!state.unreachable) state.unreachable = { since: new Date().toISOString(), message: error.message };
    showStale();
    render();
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => load(more), 3000);
  } finally {
    if (mine === generation) {
      state.loading = false;
      moreButton.disabled = false;
    }
  }
}

moreButton.addEventListener("click", () => {
  if (state.next && !state.loading) load(true);
});

// The feed's stream, open while the page is shown: a hidden page (a tab in the background) closes it, freeing one of
// the few connections the browser opens to the dashboard, and opens it again when shown (the feed then sends every
// job again, so the list is whole). A stream the browser gave up on (a restarted dashboard's 401, a proxy's 502) is
// opened again by `retry`, unless the session has ended.
let events = null;
let sessionEnded = false;
const retry = streamRetry(follow, {
  wanted: () => events === null && !sessionEnded && document.visibilityState !== "hidden",
  onSessionEnded: () => {
    sessionEnded = true;
  },
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") {
    const waiting = retry.cancel();
    if (events === null && !waiting) return;
    if (events !== null) events.close();
    events = null;
    document.body.dataset.live = "paused";
  } else if (document.body.dataset.live === "paused" && !sessionEnded) {
    follow();
  }
});

function follow() {
  if (document.visibilityState === "hidden") {
    document.body.dataset.live = "paused";
    return;
  }
  const stream = new EventSource("/api/events/jobs");
  events = stream;
  endWithSession(stream);
  stream.addEventListener("session_ended", () => {
    sessionEnded = true;
  });
  stream.addEventListener("job", (event) => upsert(JSON.parse(event.data)));
  stream.addEventListener("backend", (event) => {
    const backend = JSON.parse(event.data);
    if (backend.reachable) {
      const wasStale = state.unreachable !== null;
      state.unreachable = null;
      showStale();
      clearBanner();
      if (wasStale) load();
    } else {
      state.unreachable = { since: backend.since, message: backend.message };
      showStale();
    }
  });
  stream.addEventListener("open", () => {
    retry.opened();
    document.body.dataset.live = "true";
    if (!state.unreachable) clearBanner();
  });
  stream.addEventListener("error", () => {
    if (stream !== events) return;
    document.body.dataset.live = "false";
    if (stream.readyState === EventSource.CLOSED) {
      events = null;
      showBanner(`Live updates interrupted; trying again in ${retry.later()} s…`, "warning");
      return;
    }
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
  moreNote,
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
