/**
 * The proto name of a job status, as the protobuf JSON mapping prints it: `JOB_STATUS_COMPLETED`.
 * @param {JobStatus} status
 */
export function statusName(status: JobStatus): string;
/**
 * The proto name of a log level: `LOG_LEVEL_INFO`.
 * @param {LogLevel} level
 */
export function logLevelName(level: LogLevel): string;
/**
 * The base URL of a backend address, read like the Python SDK reads it: `host:port` and `grpc://` or `http://`
 * are plaintext, `https://` and `grpcs://` are TLS (port 443 when omitted). `tls` forces TLS.
 * @param {string} address
 * @param {boolean} tls
 */
export function baseUrl(address: string, tls?: boolean): string;
/**
 * A client of the backend's JobsService.
 *
 * @param {object} options
 * @param {string} options.address `host:port`, `grpc://host:port` or `https://host:port` (TLS).
 * @param {string} options.token the internal token, the read token, or a job's telemetry token (that job's reads).
 * @param {TlsOptions} [options.tls] TLS material (PEM) or `true`; implied by an `https://` address.
 * @param {number} [options.timeoutMs] deadline of every unary call (default 30 s; CreateJob at least 60 s).
 */
export function createPlatformClient({ address, token, tls, timeoutMs }: {
    address: string;
    token: string;
    tls?: TlsOptions | undefined;
    timeoutMs?: number | undefined;
}): {
    /** The generated, typed JobsService client: every RPC, with the token and default deadline already set. */
    jobs: JobsServiceClient;
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
    createJob(spec: {
        framework: string;
        model: string;
        dataset?: string | undefined;
        datasetPath?: string | undefined;
        epochs?: number | undefined;
        batchSize?: number | undefined;
        learningRate?: number | undefined;
        imageSize?: number | undefined;
        pretrained?: boolean | undefined;
        device?: string | undefined;
        logEveryNSteps?: number | undefined;
        advanced?: (import("./gen/trainingplatform/common/v1/common_pb.js").AdvancedConfig | {
            readonly $typeName?: undefined;
            optimizer?: string | undefined;
            lrScheduler?: string | undefined;
            weightDecay?: number | undefined;
            momentum?: number | undefined;
            warmupEpochs?: number | undefined;
            mixedPrecision?: boolean | undefined;
            seed?: bigint | undefined;
            augmentation?: (import("./gen/trainingplatform/common/v1/common_pb.js").Augmentation | {
                readonly $typeName?: undefined;
                enabled?: boolean | undefined;
                horizontalFlipProbability?: number | undefined;
                scale?: number | undefined;
                colorJitter?: number | undefined;
            }) | undefined;
            extra?: import("@bufbuild/protobuf").JsonObject | undefined;
        }) | undefined;
        displayName?: string | undefined;
        dispatch?: boolean | undefined;
        requestId?: string | undefined;
    }): Promise<CreateJobResponse>;
    /**
     * One job with its status history (`statusEvents`, oldest first).
     * @param {string} jobId
     * @returns {Promise<GetJobResponse>}
     */
    getJob(jobId: string): Promise<GetJobResponse>;
    /**
     * A job's committed metric points in sequence order, one page (a ListMetricsResponse) at a time.
     * @param {string} jobId
     * @param {{ keys?: string[], pageSize?: number }} [options] `pageSize` at most 10,000 (default).
     * @returns {AsyncGenerator<ListMetricsResponse>}
     */
    listMetrics(jobId: string, { keys, pageSize }?: {
        keys?: string[] | undefined;
        pageSize?: number | undefined;
    } | undefined): AsyncGenerator<ListMetricsResponse>;
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
    metricSeries(jobId: string, { keys, maxPoints, minStep, maxStep }?: {
        keys?: string[] | undefined;
        maxPoints?: number | undefined;
        minStep?: bigint | undefined;
        maxStep?: bigint | undefined;
    } | undefined): Promise<GetMetricSeriesResponse>;
    /**
     * A job's committed log records in sequence order, one page (a ListLogsResponse) at a time.
     * @param {string} jobId
     * @param {{ minLevel?: LogLevel | string, pageSize?: number }} [options] `minLevel` e.g. `LogLevel.WARNING` or
     *   its name, `"WARNING"`; an unknown level throws a RangeError before any call.
     * @returns {AsyncGenerator<ListLogsResponse>}
     */
    listLogs(jobId: string, { minLevel, pageSize }?: {
        minLevel?: string | LogLevel | undefined;
        pageSize?: number | undefined;
    } | undefined): AsyncGenerator<ListLogsResponse>;
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
    subscribeTelemetry(jobId: string, { after, keepFollowing, signal, maxReconnectMs }?: {
        after?: Partial<import("./gen/trainingplatform/jobs/v1/jobs_pb.js").TelemetryCursor> | undefined;
        keepFollowing?: boolean | undefined;
        signal?: AbortSignal | undefined;
        maxReconnectMs?: number | undefined;
    } | undefined): AsyncGenerator<TelemetryEvent>;
    /** Closes the HTTP/2 connection and every call still open on it. */
    close(): void;
};
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
export const TERMINAL_STATUSES: Set<JobStatus>;
export type JobsServiceClient = import("@connectrpc/connect").Client<typeof JobsService>;
export type CreateJobResponse = import("./gen/trainingplatform/jobs/v1/jobs_pb.js").CreateJobResponse;
export type GetJobResponse = import("./gen/trainingplatform/jobs/v1/jobs_pb.js").GetJobResponse;
export type ListMetricsResponse = import("./gen/trainingplatform/jobs/v1/jobs_pb.js").ListMetricsResponse;
export type GetMetricSeriesResponse = import("./gen/trainingplatform/jobs/v1/jobs_pb.js").GetMetricSeriesResponse;
export type ListLogsResponse = import("./gen/trainingplatform/jobs/v1/jobs_pb.js").ListLogsResponse;
export type TelemetryEvent = import("./gen/trainingplatform/jobs/v1/jobs_pb.js").SubscribeTelemetryResponse;
export type TelemetryCursor = import("./gen/trainingplatform/jobs/v1/jobs_pb.js").TelemetryCursor;
export type AdvancedConfigInit = import("@bufbuild/protobuf").MessageInitShape<typeof import("./gen/trainingplatform/common/v1/common_pb.js").AdvancedConfigSchema>;
/**
 * TLS material, PEM. `true` means TLS with the system's roots.
 */
export type TlsOptions = boolean | {
    ca?: string | Uint8Array;
    cert?: string | Uint8Array;
    key?: string | Uint8Array;
};
import { JobStatus } from "./gen/trainingplatform/common/v1/common_pb.js";
import { LogLevel } from "./gen/trainingplatform/common/v1/common_pb.js";
import { Code } from "@connectrpc/connect";
import { ConnectError } from "@connectrpc/connect";
import { JobsService } from "./gen/trainingplatform/jobs/v1/jobs_pb.js";
export { Code, ConnectError, JobStatus, LogLevel };
