#!/usr/bin/env node
// End to end with the Node client: creates a timm job, follows its telemetry live until the terminal status
// event, reads its metric history (every page) and its logs, and prints a JSON summary on stdout.
//
//   TP_BACKEND_ADDRESS=127.0.0.1:50051 TP_AUTH_TOKEN="$(cat .data/frontend_auth_token)" node sdk/node/examples/e2e.js
//
// TP_AUTH_TOKEN is the front-end token, as for `tp`: it may create, cancel and read jobs and nothing more, which is
// all a client of JobsService needs (INTERNAL_AUTH_TOKEN, the service token, is read when it is not set).
// Optional: TP_PAGE_SIZE (history page size, default 10000; small values exercise paging),
// TP_TIMEOUT_S (give up after this long, default 600). Exit code 0 when the job COMPLETED, 1 when it ended
// otherwise, 2 on an error (one line on stderr).

import { createPlatformClient, statusName, JobStatus } from "../src/client.js";

const address = process.env.TP_BACKEND_ADDRESS || process.env.BACKEND_API_URL || "127.0.0.1:50051";
const token = process.env.TP_AUTH_TOKEN || process.env.INTERNAL_AUTH_TOKEN || "";
const pageSize = Number(process.env.TP_PAGE_SIZE || 10_000);
const timeoutS = Number(process.env.TP_TIMEOUT_S || 600);

async function main() {
  const platform = createPlatformClient({ address, token });
  try {
    const { job } = await platform.createJob({
      framework: "timm",
      model: "resnet10t",
      dataset: "digits",
      epochs: 1,
      imageSize: 32,
      logEveryNSteps: 1,
      displayName: "node e2e",
    });
    const jobId = job.jobId;

    const statuses = [];
    const keys = new Set();
    let metricPointsStreamed = 0;
    let logRecordsStreamed = 0;
    let finalStatus = JobStatus.UNSPECIFIED;
    const signal = AbortSignal.timeout(timeoutS * 1000);
    for await (const event of platform.subscribeTelemetry(jobId, { signal })) {
      switch (event.event.case) {
        case "metrics":
          metricPointsStreamed += event.event.value.points.length;
          for (const point of event.event.value.points) keys.add(point.key);
          break;
        case "logs":
          logRecordsStreamed += event.event.value.records.length;
          break;
        case "statusEvent":
          statuses.push(statusName(event.event.value.toStatus));
          finalStatus = event.event.value.toStatus;
          break;
      }
    }

    let metricPointsListed = 0;
    let metricPages = 0;
    let lastSequence = 0n;
    for await (const page of platform.listMetrics(jobId, { pageSize })) {
      metricPages += 1;
      metricPointsListed += page.points.length;
      for (const point of page.points) {
        if (point.sequence <= lastSequence) throw new Error(`metric sequence ${point.sequence} out of order`);
        lastSequence = point.sequence;
      }
    }
    let logRecordsListed = 0;
    for await (const page of platform.listLogs(jobId, { pageSize })) logRecordsListed += page.records.length;
    const { job: finished } = await platform.getJob(jobId);

    const summary = {
      job_id: jobId,
      final_status: statusName(finalStatus),
      job_status: statusName(finished.status),
      status_sequence: statuses,
      metric_points_streamed: metricPointsStreamed,
      metric_points_listed: metricPointsListed,
      metric_pages: metricPages,
      last_metric_sequence: Number(lastSequence),
      log_records_streamed: logRecordsStreamed,
      log_records_listed: logRecordsListed,
      keys: [...keys].sort(),
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return finalStatus === JobStatus.COMPLETED ? 0 : 1;
  } finally {
    platform.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`error: ${error?.message ?? error}\n`);
    process.exitCode = 2;
  },
);
