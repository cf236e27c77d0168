// Calls GetJob once with the Node client and prints {"ok": true} or {"code": "<Code name>", "message": ...}.
// Env: TP_BACKEND_ADDRESS, TP_TOKEN, TP_JOB_ID; optional TP_CA_FILE, TP_CERT_FILE, TP_KEY_FILE (TLS, PEM).
import { readFileSync } from "node:fs";
import { Code, ConnectError, createPlatformClient } from "../../sdk/node/src/client.js";

const pem = (name) => (process.env[name] ? readFileSync(process.env[name], "utf8") : undefined);
const tls = process.env.TP_CA_FILE ? { ca: pem("TP_CA_FILE"), cert: pem("TP_CERT_FILE"), key: pem("TP_KEY_FILE") } : false;
const platform = createPlatformClient({ address: process.env.TP_BACKEND_ADDRESS, token: process.env.TP_TOKEN, tls, timeoutMs: 10_000 });
try {
  const { job } = await platform.getJob(process.env.TP_JOB_ID);
  console.log(JSON.stringify({ ok: true, job_id: job.jobId }));
} catch (error) {
  const { code, rawMessage } = ConnectError.from(error);
  console.log(JSON.stringify({ code: Code[code], message: rawMessage }));
} finally {
  platform.close();
}
