// @ts-check
/**
 * A Node.js client of the backend's JobsService, over gRPC (HTTP/2) with Connect.
 *
 *     import { createPlatformClient } from "./src/client.js";
 *
 *     const platform = createPlatformClient({ address: "127.0.0.1:50051", token });
 *     const { job } = await platform.createJob({ framework: "timm", model: "resnet10t", dataset: "digits" });
 *     for await (const event of platform.subscribeTelemetry(job.jobId)) { ... }
 *     platform.close();
 *
 * The messages and the service descriptor are generated into ./gen by `buf generate --template
 * buf.gen.ts.yaml` (never edited by hand). Every call carries `authorization: Bearer <token>` and a deadline;
 * errors are Connect's `ConnectError`, whose `code` is the gRPC status (`Code.NotFound`...).
 */

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { JobStatus, JobStatusSchema, LogLevel, LogLevelSchema } from "./gen/trainingplatform/common/v1/common_pb.js";
import { JobsService } from "./gen/trainingplatform/jobs/v1/jobs_pb.js";

export { Code, ConnectError, JobStatus, LogLevel };

/** @typedef {import("@connectrpc/connect").Client<typeof JobsService>} JobsServiceClient */
/** @typedef {import("./gen/trainingplatform/jobs/v1/jobs_pb.js").CreateJobResponse} CreateJobResponse */
/** @typedef {import("./gen/trainingplatform/jobs/v1/jobs_pb.js").GetJobResponse} GetJobResponse */
/** @typedef {import("./gen/trainingplatform/jobs/v1/jobs_pb.js").ListMetricsResponse} ListMetricsResponse */
/** @typedef {import("./gen/trainingplatform/jobs/v1/jobs_pb.js").GetMetricSeriesResponse} GetMetricSeriesResponse */
/** @typedef {import("./gen/trainingplatform/jobs/v1/jobs_pb.js").ListLogsResponse} ListLogsResponse */
/** @typedef {import("./gen/trainingplatform/jobs/v1/jobs_pb.js").SubscribeTelemetryResponse} TelemetryEvent */
/** @typedef {import("./gen/trainingplatform/jobs/v1/jobs_pb.js").TelemetryCursor} TelemetryCursor */
/** @typedef {import("@bufbuild/protobuf").MessageInitShape<typeof import("./gen/trainingplatform/common/v1/common_pb.js").AdvancedConfigSchema>} AdvancedConfigInit */

/**
 * TLS material, PEM. `true` means TLS with the system's roots.
 * @typedef {boolean | { ca?: string | Uint8Array, cert?: string | Uint8Array, key?: string | Uint8Array }} TlsOptions
 */

/** Terminal statuses: nothing follows them. */
export const TERMINAL_STATUSES = new Set([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]);

/**
 * Subscription errors after which the contract says to resubscribe from the last cursor. CANCELED is how Connect
 * reports an HTTP/2 stream or connection that broke under the call (the backend killed, a proxy restarted:
 * `http/2 stream closed with error code CANCEL`), where gRPC's Python client sees UNAVAILABLE; a cancellation the
 * caller asked for (its AbortSignal, `close()`) is never resumed.
 */
const RESUMABLE = new Set([Code.Unavailable, Code.Internal, Code.Canceled]);

/** The largest int64, the type of the telemetry cursor's sequences. */
const MAX_INT64 = 2n ** 63n - 1n;

/**
 * A cursor sequence as the BigInt the request carries: a non-negative integer (bigint, a safe integer number or
 * a decimal string).
 * @param {string} option the option's name, for the error.
 * @param {unknown} value
 * @returns {bigint}
 */
function sequence(option, value) {
  if (value === undefined || value === null) return 0n;
  // A decimal string (a cursor kept as JSON) is what protobuf-es accepts for an int64 too.
  if (typeof value === "string" && /^[0-9]{1,19}$/.test(value)) value = BigInt(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new RangeError(`${option} must be a non-negative integer (a bigint above 2^53 - 1), got ${value}`);
    }
    value = BigInt(value);
  }
  if (typeof value !== "bigint") {
    throw new TypeError(
      `${option} must be a bigint, an integer number or a decimal string, got ${typeof value} ${String(value)}`,
    );
  }
  if (value < 0n || value > MAX_INT64) {
    throw new RangeError(`${option} must be from 0 to 2^63 - 1, got ${value}`);
  }
  return value;
}

/**
 * An integer option: a number that is a safe integer, at least `min`.
 * @param {string} option the option's name, for the error.
 * @param {unknown} value
 * @param {number} min
 * @returns {number}
 */
function integer(option, value, min) {
  if (typeof value !== "number") {
    throw new TypeError(`${option} must be an integer number, got ${typeof value} ${String(value)}`);
  }
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${option} must be an integer of at least ${min}, got ${value}`);
  }
  return value;
}

/**
 * A log level: a LogLevel value, or its name (`WARNING` or `LOG_LEVEL_WARNING`).
 * @param {unknown} value
 * @returns {LogLevel}
 */
function logLevel(value) {
  // The enum by name (TypeScript's enum object also maps each number back to its name: those keys are skipped).
  const byName = /** @type {Record<string, LogLevel>} */ (/** @type {unknown} */ (LogLevel));
  const names = Object.keys(byName).filter((name) => Number.isNaN(Number(name)));
  if (typeof value === "string") {
    const name = value.toUpperCase().replace(/^LOG_LEVEL_/, "");
    if (names.includes(name)) return byName[name];
  } else if (typeof value === "number" && names.some((name) => byName[name] === value)) {
    return value;
  }
  throw new RangeError(`minLevel must be a LogLevel or one of ${names.join(", ")}, got ${String(value)}`);
}

/**
 * Whether the error is the client's own failure to encode a request (Connect reports it as INTERNAL, like a
 * stream broken on the wire): the caller's input, never resumed.
 * @param {unknown} error
 */
function isLocalSerializeError(error) {
  return error instanceof ConnectError && error.rawMessage.startsWith("serialize ");
}

/** The options `createJob` takes: any other is refused rather than dropped. */
const CREATE_JOB_OPTIONS = new Set([
  "framework",
  "model",
  "dataset",
  "datasetPath",
  "epochs",
  "batchSize",
  "learningRate",
  "imageSize",
  "pretrained",
  "device",
  "logEveryNSteps",
  "advanced",
  "displayName",
  "dispatch",
  "requestId",
]);

/**
 * The proto name of a job status, as the protobuf JSON mapping prints it: `JOB_STATUS_COMPLETED`.
 * @param {JobStatus} status
 */
export function statusName(status) {
  return JobStatusSchema.value[status]?.name ?? `JOB_STATUS_${status}`;
}

/**
 * The proto name of a log level: `LOG_LEVEL_INFO`.
 * @param {LogLevel} level
 */
export function logLevelName(level) {
  return LogLevelSchema.value[level]?.name ?? `LOG_LEVEL_${level}`;
}

/**
 * The base URL of a backend address, read like the Python SDK reads it: `host:port` and `grpc://` or `http://`
 * are plaintext, `https://` and `grpcs://` are TLS (port 443 when omitted). `tls` forces TLS.
 * @param {string} address
 * @param {boolean} tls
 */
export function baseUrl(address, tls = false) {
  const text = address.trim();
  if (!text) throw new Error("backend address is empty");
  const match = /^([a-z]+):\/\/(.*)$/i.exec(text);
  const scheme = match ? match[1].toLowerCase() : "";
  if (match && !["grpc", "http", "https", "grpcs"].includes(scheme)) {
    throw new Error(`backend address ${JSON.stringify(address)}: scheme must be grpc://, http://, https:// or grpcs://`);
  }
  const secure = tls || scheme === "https" || scheme === "grpcs";
  const authority = (match ? match[2] : text).split("/")[0];
  const url = new URL(`${secure ? "https" : "http"}://${authority}`);
  if (!url.hostname || (!/:\d+$/.test(authority) && !secure)) {
    throw new Error(`backend address ${JSON.stringify(address)}: expected host:port`);
  }
  return url.origin;
}

/**
 * A client of the backend's JobsService.
 *
 * @param {object} options
 * @param {string} options.address `host:port`, `grpc://host:port` or `https://host:port` (TLS).
 * @param {string} options.token the internal token, the read token, or a job's telemetry token (that job's reads).
 * @param {TlsOptions} [options.tls] TLS material (PEM) or `true`; implied by an `https://` address.
 * @param {number} [options.timeoutMs] deadline of every unary call (default 30 s; CreateJob at least 60 s).
 */
export function createPlatformClient({ address, token, tls = false, timeoutMs = 30_000 }) {
  if (!token) throw new Error("a token is required: the internal token, the read token or a job's token");
  const url = baseUrl(address, Boolean(tls));
  const nodeOptions = typeof tls === "object" ? { ca: tls.ca, cert: tls.cert, key: tls.key } : {};
  // The same keepalive as the Python SDK: a ping every 30 s is three times slower than the backend's floor
  // (10 s), so a subscription held for days is never closed with GOAWAY too_many_pings.
  const sessionManager = new Http2SessionManager(
    url,
    { pingIntervalMs: 30_000, pingTimeoutMs: 10_000, pingIdleConnection: true },
    nodeOptions,
  );
  /** @type {import("@connectrpc/connect").Interceptor} */
  const authorize = (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
  const transport = createGrpcTransport({
    baseUrl: url,
    sessionManager,
    interceptors: [authorize],
    defaultTimeoutMs: timeoutMs,
    readMaxBytes: 16 * 1024 * 1024,
  });
  /** @type {JobsServiceClient} */
  const jobs = createClient(JobsService, transport);
  // Counts close() calls: a subscription open across one must end, not reconnect (the session manager would
  // connect again on the next call, as it does for calls made after close()).
  let closes = 0;

  return {
    /** The generated, typed JobsService client: every RPC, with the token and default deadline already set. */
    jobs,

    /**
     * Creates a job and (unless `dispatch` is false) hands it to a trainer of its framework. Not retried by the
     * client. To retry it safely yourself, pass an idempotency key, `requestId` (a new UUID per job, the same on
     * every retry of it): a CreateJob with a key already used returns that job (and its telemetry token) instead
     * of creating another, as the Python client's `create_job(request_id=...)` does. The response's
     * `telemetryToken` is returned only here. An option not listed below throws a TypeError before any call.
     *
     * @param {object} spec
     * @param {string} spec.framework `timm` or `ultralytics`.
     * @param {string} spec.model the framework's model name (`resnet10t`, `yolo11n.yaml`).
     * @param {string} [spec.dataset] a built-in dataset (`digits`, `shapes`) or a label for `datasetPath`.
     * @param {string} [spec.datasetPath] a dataset on the trainer's file system.
     * @param {number} [spec.epochs] an integer, at least 1 (default 1); anything else throws before any call.
     * @param {number} [spec.batchSize] 0: the trainer's default.
     * @param {number} [spec.learningRate] 0: the trainer's default.
     * @param {number} [spec.imageSize] 0: the model's default.
     * @param {boolean} [spec.pretrained] weights must already be in the trainer's cache.
     * @param {string} [spec.device] `auto`, `cpu`, `cuda`, `cuda:N`.
     * @param {number} [spec.logEveryNSteps] 0: the trainer's default (100).
     * @param {AdvancedConfigInit} [spec.advanced] optimizer, scheduler, augmentation, `extra`...
     * @param {string} [spec.displayName]
     * @param {boolean} [spec.dispatch] false: stays PENDING, the caller runs the trainer itself.
     * @param {string} [spec.requestId] idempotency key, at most 64 characters; empty: none.
     * @returns {Promise<CreateJobResponse>}
     */
    createJob(spec) {
      if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
        throw new TypeError(
          "createJob: takes the job's options as an object, e.g. " +
            '{ framework: "timm", model: "resnet10t", dataset: "digits" }',
        );
      }
      const unknown = Object.keys(spec).filter((name) => !CREATE_JOB_OPTIONS.has(name));
      if (unknown.length) {
        throw new TypeError(
          `createJob: unknown option${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")} ` +
            `(known: ${[...CREATE_JOB_OPTIONS].join(", ")})`,
        );
      }
      const {
        framework,
        model,
        dataset = "",
        datasetPath = "",
        epochs = 1,
        batchSize = 0,
        learningRate = 0,
        imageSize = 0,
        pretrained = false,
        device = "",
        logEveryNSteps = 0,
        advanced = {},
        displayName = "",
        dispatch = true,
        requestId = "",
      } = spec;
      integer("epochs", epochs, 1);
      return jobs.createJob(
        {
          spec: {
            framework,
            model: { name: model, pretrained, imageSize },
            dataset: { name: dataset, path: datasetPath },
            training: { epochs, batchSize, learningRate, device, logEveryNSteps },
            // Always set, empty by default, as the Python client sends it: the backend recognises a retry by the
            // request's bytes, so the same job made by either client with the same requestId is the same request.
            advanced,
          },
          displayName,
          dispatch,
          requestId,
        },
        { timeoutMs: Math.max(timeoutMs, 60_000) },
      );
    },

    /**
     * One job with its status history (`statusEvents`, oldest first).
     * @param {string} jobId
     * @returns {Promise<GetJobResponse>}
     */
    getJob(jobId) {
      return retrying(() => jobs.getJob({ jobId }));
    },

    /**
     * A job's committed metric points in sequence order, one page (a ListMetricsResponse) at a time.
     * @param {string} jobId
     * @param {{ keys?: string[], pageSize?: number }} [options] `pageSize` at most 10,000 (default).
     * @returns {AsyncGenerator<ListMetricsResponse>}
     */
    async *listMetrics(jobId, { keys = [], pageSize = 10_000 } = {}) {
      let pageToken = "";
      do {
        const page = await retrying(() => jobs.listMetrics({ jobId, keys, pageSize, pageToken }));
        yield page;
        pageToken = page.nextPageToken;
      } while (pageToken);
    },

    /**
     * A job's metric series bucketed by step on the server (GetMetricSeries), one call whatever their length:
     * per key at most `maxPoints` buckets, each with its first and last step, min, max, last value and count, so
     * a chart draws the min/max band and the last-value line without hiding a spike. Subscribe with
     * `{ after: { metricSequence: response.lastSequence } }` to continue live without a gap or a duplicate.
     * @param {string} jobId
     * @param {{ keys?: string[], maxPoints?: number, minStep?: bigint, maxStep?: bigint }} [options] `keys` empty:
     *   every key; `maxPoints` 0: 1000 (at most 10,000); `minStep`/`maxStep` unset: the whole series.
     * @returns {Promise<GetMetricSeriesResponse>}
     */
    metricSeries(jobId, { keys = [], maxPoints = 0, minStep = undefined, maxStep = undefined } = {}) {
      return retrying(() => jobs.getMetricSeries({ jobId, keys, maxPoints, minStep, maxStep }));
    },

    /**
     * A job's committed log records in sequence order, one page (a ListLogsResponse) at a time.
     * @param {string} jobId
     * @param {{ minLevel?: LogLevel | string, pageSize?: number }} [options] `minLevel` e.g. `LogLevel.WARNING` or
     *   its name, `"WARNING"`; an unknown level throws a RangeError before any call.
     * @returns {AsyncGenerator<ListLogsResponse>}
     */
    async *listLogs(jobId, { minLevel = LogLevel.UNSPECIFIED, pageSize = 10_000 } = {}) {
      minLevel = logLevel(minLevel);
      let pageToken = "";
      do {
        const page = await retrying(() => jobs.listLogs({ jobId, minLevel, pageSize, pageToken }));
        yield page;
        pageToken = page.nextPageToken;
      } while (pageToken);
    },

    /**
     * Replays the job's telemetry after `after`, then follows it live, until its terminal status event (or
     * until `signal` aborts, with `keepFollowing`). A subscription broken with UNAVAILABLE, INTERNAL or CANCELED
     * (the connection broke: the backend killed or restarted, a proxy restarted) is resumed from the last cursor,
     * with backoff, for up to `maxReconnectMs` without progress; one ended by the caller (`signal` aborted,
     * `close()`) is not. No deadline. Each `after` sequence is a non-negative integer (bigint, or a number up to
     * 2^53 - 1, or a decimal string); anything else throws a TypeError or RangeError before any call.
     *
     * @param {string} jobId
     * @param {{ after?: Partial<TelemetryCursor>, keepFollowing?: boolean, signal?: AbortSignal, maxReconnectMs?: number }} [options]
     * @returns {AsyncGenerator<TelemetryEvent>}
     */
    async *subscribeTelemetry(jobId, { after = {}, keepFollowing = false, signal, maxReconnectMs = 60_000 } = {}) {
      // The caller's cursor is checked here, before any call: a bad one throws at once instead of failing to
      // encode on every reconnect.
      let cursor = {
        metricSequence: sequence("after.metricSequence", after.metricSequence),
        logSequence: sequence("after.logSequence", after.logSequence),
        statusSequence: sequence("after.statusSequence", after.statusSequence),
        epochSummarySequence: sequence("after.epochSummarySequence", after.epochSummarySequence),
      };
      let delayMs = 200;
      let deadline = Date.now() + maxReconnectMs;
      const closesAtStart = closes;
      const closed = () => closes !== closesAtStart;
      for (;;) {
        if (closed()) throw new ConnectError("the client was closed", Code.Canceled);
        try {
          const stream = jobs.subscribeTelemetry({ jobId, after: cursor, keepFollowing }, { signal, timeoutMs: 0 });
          for await (const event of stream) {
            if (event.cursor) cursor = event.cursor;
            delayMs = 200;
            deadline = Date.now() + maxReconnectMs;
            yield event;
          }
          return;
        } catch (error) {
          const code = ConnectError.from(error).code;
          // The caller's own cancellation (its signal, close()) also surfaces as CANCELED: never resumed.
          if (signal?.aborted || closed() || !RESUMABLE.has(code) || isLocalSerializeError(error)) throw error;
          if (Date.now() > deadline) throw error;
        }
        await sleep(delayMs * (0.5 + Math.random() / 2), signal);
        delayMs = Math.min(delayMs * 2, 5_000);
      }
    },

    /** Closes the HTTP/2 connection and every call still open on it. */
    close() {
      closes++;
      sessionManager.abort();
    },
  };
}

/**
 * Waits `ms`, or less when `signal` aborts (the caller then sees the abort on its next call).
 * @param {number} ms
 * @param {AbortSignal} [signal]
 */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(undefined);
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve(undefined);
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Runs an idempotent read, retrying UNAVAILABLE (the backend restarting) like the Python client: 5 attempts,
 * backoff from 200 ms doubling to 3 s.
 * @template T
 * @param {() => Promise<T>} call
 * @returns {Promise<T>}
 */
async function retrying(call) {
  let delayMs = 200;
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      if (attempt >= 5 || ConnectError.from(error).code !== Code.Unavailable) throw error;
    }
    await sleep(delayMs * (0.5 + Math.random() / 2));
    delayMs = Math.min(delayMs * 2, 3_000);
  }
}
