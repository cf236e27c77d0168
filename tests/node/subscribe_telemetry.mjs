// Follows one job's telemetry with the Node client's subscribeTelemetry and prints, at the end, one JSON line:
// {"metric_sequences": [...], "statuses": ["JOB_STATUS_PENDING", ...], "error": null | {"code", "message"},
// "elapsed_ms": ...}. Writes "subscribed" on stderr once the first event arrived.
// Env: TP_BACKEND_ADDRESS, TP_TOKEN, TP_JOB_ID; optional TP_KEEP_FOLLOWING=1, TP_STOP_AFTER_MS with TP_STOP=abort
// (the caller's AbortSignal) or TP_STOP=close (platform.close()), TP_MAX_RECONNECT_MS (default 30000).
import { Code, ConnectError, createPlatformClient, statusName } from "../../sdk/node/src/client.js";

const env = process.env;
const platform = createPlatformClient({ address: env.TP_BACKEND_ADDRESS, token: env.TP_TOKEN, timeoutMs: 10_000 });
const controller = new AbortController();
const metricSequences = [];
const statuses = [];
let error = null;
let subscribed = false;
let stoppedAt = 0;
const started = Date.now();
if (env.TP_STOP_AFTER_MS) {
  setTimeout(() => {
    stoppedAt = Date.now();
    if (env.TP_STOP === "close") platform.close();
    else controller.abort();
  }, Number(env.TP_STOP_AFTER_MS));
}
try {
  const events = platform.subscribeTelemetry(env.TP_JOB_ID, {
    keepFollowing: env.TP_KEEP_FOLLOWING === "1",
    signal: controller.signal,
    maxReconnectMs: Number(env.TP_MAX_RECONNECT_MS ?? 30_000),
  });
  for await (const event of events) {
    if (!subscribed) {
      subscribed = true;
      process.stderr.write("subscribed\n");
    }
    if (event.event.case === "metrics") for (const p of event.event.value.points) metricSequences.push(Number(p.sequence));
    if (event.event.case === "statusEvent") statuses.push(statusName(event.event.value.toStatus));
  }
} catch (caught) {
  const { code, rawMessage } = ConnectError.from(caught);
  error = { code: Code[code], message: rawMessage };
} finally {
  platform.close();
}
const ended = Date.now();
console.log(
  JSON.stringify({
    metric_sequences: metricSequences,
    statuses,
    error,
    elapsed_ms: ended - started,
    after_stop_ms: stoppedAt ? ended - stoppedAt : null,
  }),
);
