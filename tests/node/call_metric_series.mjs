// Calls GetMetricSeries once with the Node client and prints the answer as JSON (bigints as numbers), or
// {"code": "<Code name>", "message": ...}.
// Env: TP_BACKEND_ADDRESS, TP_TOKEN, TP_JOB_ID; optional TP_KEYS (comma-separated), TP_MAX_POINTS, TP_MIN_STEP,
// TP_MAX_STEP.
import { Code, ConnectError, createPlatformClient } from "../../sdk/node/src/client.js";

const env = process.env;
const platform = createPlatformClient({ address: env.TP_BACKEND_ADDRESS, token: env.TP_TOKEN, timeoutMs: 30_000 });
try {
  const response = await platform.metricSeries(env.TP_JOB_ID, {
    keys: env.TP_KEYS ? env.TP_KEYS.split(",") : [],
    maxPoints: Number(env.TP_MAX_POINTS ?? 0),
    minStep: env.TP_MIN_STEP ? BigInt(env.TP_MIN_STEP) : undefined,
    maxStep: env.TP_MAX_STEP ? BigInt(env.TP_MAX_STEP) : undefined,
  });
  const series = response.series.map((s) => ({
    key: s.key,
    total_points: Number(s.totalPoints),
    buckets: s.buckets.map((b) => ({
      first_step: Number(b.firstStep),
      last_step: Number(b.lastStep),
      min: b.min,
      max: b.max,
      last: b.last,
      count: Number(b.count),
    })),
  }));
  console.log(JSON.stringify({ ok: true, last_sequence: Number(response.lastSequence), series }));
} catch (error) {
  const { code, rawMessage } = ConnectError.from(error);
  console.log(JSON.stringify({ code: Code[code], message: rawMessage }));
} finally {
  platform.close();
}
