// The Node client from TypeScript: the same calls as e2e.js, typed by src/client.d.ts (generated from the JSDoc of
// src/client.js by `npm run types`). Not run by the tests: `npm run typecheck-examples` type-checks it, as
// tests/node/test_node_types.py does, so it shows the types a TypeScript caller gets.

import {
  type TelemetryEvent,
  ConnectError,
  Code,
  JobStatus,
  createPlatformClient,
  statusName,
} from "trainingplatform-node-client";

/** Creates a one-epoch timm job, follows it to its end, and returns its final status and last value per key. */
export async function trainAndFollow(
  address: string,
  token: string,
): Promise<{ status: string; last: Map<string, number> }> {
  const platform = createPlatformClient({ address, token, timeoutMs: 60_000 });
  try {
    const { job } = await platform.createJob({ framework: "timm", model: "resnet10t", dataset: "digits", epochs: 1 });
    if (job === undefined) throw new Error("CreateJob answered no job");
    const last = new Map<string, number>();
    let status: JobStatus = JobStatus.UNSPECIFIED;
    for await (const event of platform.subscribeTelemetry(job.jobId)) {
      status = record(event, last) ?? status;
    }
    return { status: statusName(status), last };
  } catch (error) {
    if (error instanceof ConnectError && error.code === Code.Unauthenticated) {
      throw new Error(`the backend at ${address} refused the token: ${error.rawMessage}`);
    }
    throw error;
  } finally {
    platform.close();
  }
}

/** Keeps each metric point's value by key; returns the status of a status event. */
function record(event: TelemetryEvent, last: Map<string, number>): JobStatus | undefined {
  switch (event.event.case) {
    case "metrics":
      for (const point of event.event.value.points) last.set(point.key, point.value);
      return undefined;
    case "statusEvent":
      return event.event.value.toStatus;
    default:
      return undefined;
  }
}
