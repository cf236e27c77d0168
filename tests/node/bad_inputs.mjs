// Calls the Node client with inputs that are the caller's mistake and prints one JSON line per case:
// {"case", "name", "code", "message", "ms"} (code: the Connect code's name; null for an error that is not a
// ConnectError; name "none" when nothing was thrown). Env: TP_BACKEND_ADDRESS, TP_TOKEN, TP_JOB_ID.
import { Code, ConnectError, createPlatformClient } from "../../sdk/node/src/client.js";

const env = process.env;
const platform = createPlatformClient({ address: env.TP_BACKEND_ADDRESS, token: env.TP_TOKEN, timeoutMs: 30_000 });
const jobId = env.TP_JOB_ID;
const spec = { framework: "timm", model: "resnet10t", dataset: "digits", dispatch: false };
// Long enough that a retried caller error is seen (the test's bound is far below it), short enough to end.
const maxReconnectMs = 20_000;

async function drain(after) {
  for await (const _ of platform.subscribeTelemetry(jobId, { after, maxReconnectMs })) {
    // a bad cursor must throw before any event
  }
}

const cases = {
  "cursor 1.5": () => drain({ metricSequence: 1.5 }),
  "cursor -1n": () => drain({ logSequence: -1n }),
  "cursor 2^63": () => drain({ statusSequence: 2n ** 63n }),
  "cursor text": () => drain({ epochSummarySequence: "seven" }),
  "createJob()": () => platform.createJob(),
  "epochs 1.5": () => platform.createJob({ ...spec, epochs: 1.5 }),
  "epochs text": () => platform.createJob({ ...spec, epochs: "2" }),
  "minLevel WARNNG": async () => {
    for await (const _ of platform.listLogs(jobId, { minLevel: "WARNNG" })) {
      // an unknown level must throw before any page
    }
  },
  "minLevel 99": async () => {
    for await (const _ of platform.listLogs(jobId, { minLevel: 99 })) {
      // an unknown level must throw before any page
    }
  },
  "minLevel WARNING": async () => {
    for await (const _ of platform.listLogs(jobId, { minLevel: "WARNING" })) {
      // a level's name works as well as its value
    }
  },
};

for (const [name, run] of Object.entries(cases)) {
  const started = Date.now();
  let result = { name: "none", code: null, message: "" };
  try {
    await run();
  } catch (caught) {
    const connect = caught instanceof ConnectError ? caught : null;
    result = {
      name: caught?.name,
      code: connect ? Code[connect.code] : null,
      message: connect ? connect.rawMessage : String(caught?.message ?? caught),
    };
  }
  console.log(JSON.stringify({ case: name, ...result, ms: Date.now() - started }));
}
platform.close();
