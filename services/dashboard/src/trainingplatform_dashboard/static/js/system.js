// System metrics of one job: the `system/` keys the SDK samples (CPU, memory, GPU where present), live.

import { JobCharts, SeriesStore } from "./charts.js";
import {
  TERMINAL,
  api,
  clearBanner,
  el,
  endWithSession,
  header,
  jobName,
  renderError,
  showBanner,
  statusBadge,
} from "./common.js";

const main = document.getElementById("main");
const jobId = decodeURIComponent(location.pathname.split("/")[2] || "");

async function start() {
  header("jobs");
  let detail;
  try {
    detail = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    renderError(main, error);
    return;
  }
  const job = detail.job;
  const status = el("span", { id: "job-status" }, statusBadge(job.status));
  const chartBox = el("div", { id: "charts", class: "charts" });
  main.replaceChildren(
    el(
      "div",
      { class: "page-head" },
      el(
        "div",
        { class: "title-row" },
        el("h1", { text: `${jobName(job)}: system metrics` }),
        status,
      ),
      el("a", { class: "button", href: `/jobs/${encodeURIComponent(jobId)}`, text: "Back to the job" }),
    ),
    el(
      "p",
      { class: "muted" },
      "CPU and memory of the training process and its host, and GPU utilization and memory where the host has NVIDIA GPUs, sampled every few seconds by the SDK.",
    ),
    el("section", { class: "panel" }, chartBox),
  );
  const store = new SeriesStore(jobId);
  const charts = new JobCharts(chartBox, store, { filter: (key) => key.startsWith("system/") });
  charts.empty.textContent = "No system metrics yet: the SDK samples them every few seconds while the job trains.";
  try {
    await charts.load();
  } catch (error) {
    showBanner(`Could not load the metrics: ${error.message}`);
  }
  if (TERMINAL.has(job.status)) return;
  const events = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events?after=m${store.lastSequence}`);
  endWithSession(events);
  events.addEventListener("open", clearBanner);
  events.addEventListener("metrics", (e) => charts.append(JSON.parse(e.data).points || []));
  events.addEventListener("status", (e) => status.replaceChildren(statusBadge(JSON.parse(e.data).status)));
  events.addEventListener("error", (e) => {
    if (!e.data) return; // a dropped connection: EventSource reconnects by itself
    events.close();
    showBanner("Live updates stopped: the server refused the stream.");
  });
  events.addEventListener("end", (e) => {
    events.close();
    status.replaceChildren(statusBadge(JSON.parse(e.data).status));
  });
}

start();
