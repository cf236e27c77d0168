// System metrics of one job: the `system/` keys the SDK samples (CPU, memory, GPU where present), live (the job
// page's stream handling: paused while hidden, the backend's outages and refusals shown, retried by itself).

import { JobCharts, SeriesStore } from "./charts.js";
import {
  LIVE_CHANGED,
  TERMINAL,
  el,
  followJob,
  header,
  jobName,
  loadJob,
  renderError,
  showBanner,
  showJobStatus,
} from "./common.js";

const main = document.getElementById("main");
const jobId = decodeURIComponent(location.pathname.split("/")[2] || "");

async function start() {
  header("jobs");
  if (!jobId) {
    renderError(main, new Error("No job id in the address."));
    return;
  }
  const detail = await loadJob(jobId, main);
  if (detail === null) return;
  const job = detail.job;
  const status = el("span", { id: "job-status" });
  let current = job.status;
  const showStatus = (name) => {
    if (name) current = name;
    showJobStatus(status, current);
  };
  showStatus();
  // The status is marked as the last known while the live stream is lost, and unmarked once it is back.
  window.addEventListener(LIVE_CHANGED, () => showStatus());
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
  followJob(jobId, `m${store.lastSequence}`, {
    metrics: (e) => charts.append(JSON.parse(e.data).points || []),
    status: (e) => showStatus(JSON.parse(e.data).status),
    end: (e) => showStatus(JSON.parse(e.data).status),
  });
}

start();
