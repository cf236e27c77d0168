// Calls the Node client's createJob helper with the JSON options in TP_CREATE_OPTIONS, TP_CALLS times (default 1),
// and prints one JSON line: {"jobs": [{"job_id", "display_name", "has_token"}...]} or
// {"error": {"name", "code", "message"}} (code: the Connect code's name; null for an error thrown before a call).
// Env: TP_BACKEND_ADDRESS, TP_TOKEN, TP_CREATE_OPTIONS.
import { Code, ConnectError, createPlatformClient } from "../../sdk/node/src/client.js";

const env = process.env;
const platform = createPlatformClient({ address: env.TP_BACKEND_ADDRESS, token: env.TP_TOKEN, timeoutMs: 30_000 });
const options = JSON.parse(env.TP_CREATE_OPTIONS);
const jobs = [];
try {
  for (let i = 0; i < Number(env.TP_CALLS ?? 1); i++) {
    const { job, telemetryToken } = await platform.createJob(options);
    jobs.push({ job_id: job.jobId, display_name: job.displayName, has_token: telemetryToken.length > 0 });
  }
  console.log(JSON.stringify({ jobs }));
} catch (caught) {
  const connect = caught instanceof ConnectError ? caught : null;
  console.log(
    JSON.stringify({
      jobs,
      error: {
        name: caught?.name,
        code: connect ? Code[connect.code] : null,
        message: connect ? connect.rawMessage : String(caught?.message ?? caught),
      },
    }),
  );
} finally {
  platform.close();
}
