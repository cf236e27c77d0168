// Shared helpers of every page: DOM building (text only, never HTML), the JSON API with the CSRF header,
// formatting, and the page header. Every string that comes from a job is set with textContent.

/** Creates an element; `props` sets attributes/properties (never innerHTML), children are nodes or text. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "href") node.setAttribute("href", safeUrl(value) ?? "#");
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Only same-origin paths and http(s) URLs become links (no javascript: or data: URLs from a job). */
export function safeUrl(value) {
  const text = String(value ?? "");
  if (text.startsWith("/") && !text.startsWith("//")) return text;
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || String(status);
    this.field = error.field || null;
  }
}

let csrfToken = null;

async function csrf() {
  if (csrfToken === null) csrfToken = (await api("/api/session")).csrf_token;
  return csrfToken;
}

/** The `field` of the dashboard's refusal of a change for its CSRF token (security.py's). */
const CSRF_FIELD = "X-CSRF-Token";

/** Whether an error is the dashboard's refusal of a change for its CSRF token (a 403 PERMISSION_DENIED whose field
 * is the X-CSRF-Token header: security.py's), not any other 403 (a proxy's, a refusal of the change itself). */
function isCsrfRefusal(error) {
  return error.status === 403 && error.code === "PERMISSION_DENIED" && error.field === CSRF_FIELD;
}

/** GET (or POST with `body`) a JSON API path; throws ApiError with the server's code, message and field.
 * A change refused for its CSRF token (a login in another tab replaced this browser's session, and with it the
 * token) reads the token again and is tried once more; any other refusal is thrown as it is. */
export async function api(path, { method = "GET", body, retried = false } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = await csrf();
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  const response = await fetchOrTimeout(path, init);
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, payload);
    if (method !== "GET" && !retried && isCsrfRefusal(error)) {
      csrfToken = null;
      return api(path, { method, body, retried: true });
    }
    if (response.status === 401) showBanner(SESSION_ENDED);
    throw error;
  }
  return payload;
}

/** How long a request may wait for its answer before the page gives up and says so. */
export const REQUEST_TIMEOUT_MS = 15000;

export const REQUEST_TIMED_OUT =
  `The dashboard did not answer within ${REQUEST_TIMEOUT_MS / 1000} s. If many dashboard tabs are open in this ` +
  "browser (it opens at most 6 connections to one server), close some of them or switch away from them, then try " +
  "again.";

/** fetch() that gives up after REQUEST_TIMEOUT_MS: a request that cannot get a connection (every one this browser
 * allows to the dashboard is busy) fails with a message that says what to do instead of hanging. */
async function fetchOrTimeout(path, init) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    return await fetch(path, { ...init, signal: controller.signal });
  } catch (error) {
    if (controller.signal.aborted) throw new Error(REQUEST_TIMED_OUT);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

export const SESSION_ENDED = "Your session has ended: open the login URL that `tp up` (or tp-dashboard) printed.";

/** The event `setLive` sends on `window` when the page's live stream changes state. */
export const LIVE_CHANGED = "tp-live-changed";

let liveLost = "";

/** Sets how the page's live stream is: `document.body.dataset.live` ("true", "false", "paused", "ended"). "false"
 * comes with why what the page shows may be out of date (`lost`: shown beside a job's status, `showJobStatus`).
 * Sends LIVE_CHANGED on `window`. */
export function setLive(state, lost = "connection lost, reconnecting…") {
  document.body.dataset.live = state;
  liveLost = state === "false" ? lost : "";
  window.dispatchEvent(new Event(LIVE_CHANGED));
}

/** Shows a job's status in `holder` (a page's `#job-status`). While the page's live stream is lost (the backend or
 * the dashboard unreachable, the stream refused, the session ended), the status of a job not ended is only the last
 * one the page heard of: the holder says so (`data-stale="true"`, "last known · connection lost, reconnecting…")
 * until the stream is back. The page calls it again on LIVE_CHANGED. */
export function showJobStatus(holder, status) {
  const stale = liveLost !== "" && !TERMINAL.has(String(status));
  holder.dataset.stale = String(stale);
  holder.replaceChildren(statusBadge(status));
  if (stale) {
    holder.append(
      el("span", {
        class: "status-stale",
        text: `last known · ${liveLost}`,
        title: "The page cannot hear of the job's changes now: the status shown is the last one it heard of.",
      }),
    );
  }
}

/** An event stream ends with its session (`event: session_ended`): stop it (a reconnect would only get a 401) and
 * say so. */
export function endWithSession(events) {
  events.addEventListener("session_ended", () => {
    events.close();
    setLive("false", "the session has ended");
    showBanner(SESSION_ENDED);
  });
}

/** A job's live updates can be unavailable for a while: the backend is unreachable, or it refused the dashboard's
 * subscription (it allows its token TP_MAX_SUBSCRIPTIONS_PER_CALLER of them). The server says so
 * (`event: live_unavailable`, with the reason and, for a refusal, when it tries again) and when they resume
 * (`event: live_resumed`); the page shows it. */
export function showLiveState(events) {
  events.addEventListener("live_unavailable", (e) => {
    let message = "live updates are unavailable";
    try {
      const data = JSON.parse(e.data);
      message = data.error.message || message;
      if (data.retry_in_s) message += `; retrying in ${data.retry_in_s} s`;
    } catch {
      // keep the generic message
    }
    setLive("false");
    showBanner(message.charAt(0).toUpperCase() + message.slice(1), "warning");
  });
  events.addEventListener("live_resumed", () => {
    setLive("true");
    clearBanner();
  });
}

/** Reopens an event stream the browser gave up on. EventSource reconnects by itself after a dropped connection, but
 * closes for good when an answer is not a stream: a restarted dashboard's 401 (sessions live in memory), a proxy's
 * 502, a 503 while the backend is down. `later()` asks /api/session after a delay (1 s, doubling to 10 s; `opened()`
 * resets it): on a 401 the session has ended, the page says so and `onSessionEnded` runs; on anything else `open`
 * makes the stream again. Each step first checks `wanted()` (the page still wants a stream: not hidden, not ended,
 * none open). */
export function streamRetry(open, { wanted = () => true, onSessionEnded = () => {} } = {}) {
  let delay = 1000;
  let timer = null;

  async function attempt() {
    timer = null;
    if (!wanted()) return;
    try {
      await api("/api/session"); // a 401 shows the session-ended banner
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        setLive("false", "the session has ended");
        onSessionEnded();
        return;
      }
    }
    if (wanted()) open();
  }

  return {
    /** Tries again after the current delay; returns it in seconds (for the page's banner). */
    later() {
      clearTimeout(timer);
      const wait = delay;
      delay = Math.min(delay * 2, 10000);
      timer = setTimeout(attempt, wait);
      return wait / 1000;
    },
    /** The stream is open: the next retry waits 1 s again. */
    opened() {
      delay = 1000;
    },
    /** Drops a retry not yet started; returns whether there was one. */
    cancel() {
      const waiting = timer !== null;
      clearTimeout(timer);
      timer = null;
      return waiting;
    },
  };
}

/** Follows a job's live events (`/api/jobs/{id}/events`) while the page is shown. A hidden page (a tab in the
 * background) closes its stream, freeing one of the few connections the browser opens to the dashboard, and
 * reopens it when it is shown again, after the id of the last event it received: nothing is missed or repeated.
 * `handlers` maps event names (metrics, logs, status, epoch_summary, end) to functions of the event. The page's
 * banner and `document.body.dataset.live` ("true", "false", "paused", "ended") say how the stream is. */
export function followJob(jobId, after, handlers) {
  let cursor = after;
  let source = null;
  let stopped = false;
  const retry = streamRetry(open, {
    wanted: () => !stopped && source === null && document.visibilityState !== "hidden",
    onSessionEnded: stop,
  });

  function stop() {
    stopped = true;
    retry.cancel();
    if (source !== null) source.close();
    source = null;
  }

  function open() {
    const events = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events?after=${encodeURIComponent(cursor)}`);
    source = events;
    endWithSession(events);
    events.addEventListener("session_ended", stop);
    showLiveState(events);
    events.addEventListener("open", () => {
      retry.opened();
      setLive("true");
      clearBanner();
    });
    for (const [name, handler] of Object.entries(handlers)) {
      events.addEventListener(name, (e) => {
        if (e.lastEventId) cursor = e.lastEventId;
        if (name === "end") {
          stop();
          setLive("ended");
        }
        handler(e);
      });
    }
    events.addEventListener("error", (e) => {
      if (e.data) {
        // The server refused the stream (event: error): say why and stop.
        stop();
        let message = "the live stream was refused";
        try {
          message = JSON.parse(e.data).error.message || message;
        } catch {
          // keep the generic message
        }
        setLive("false", "live updates stopped");
        showBanner(`Live updates stopped: ${message}`);
        return;
      }
      if (events !== source) return;
      setLive("false");
      if (events.readyState === EventSource.CLOSED) {
        source = null;
        showBanner(`Live updates interrupted; trying again in ${retry.later()} s…`, "warning");
        return;
      }
      showBanner("Live updates interrupted; reconnecting…", "warning");
    });
  }

  document.addEventListener("visibilitychange", () => {
    if (stopped) return;
    if (document.visibilityState === "hidden") {
      retry.cancel();
      if (source !== null) source.close();
      source = null;
      setLive("paused");
    } else if (source === null) {
      open();
    }
  });
  if (document.visibilityState === "hidden") setLive("paused");
  else open();
}

/** Loads a job's detail (GET /api/jobs/{id}) for a page. While the backend (or the dashboard) is unreachable it
 * says so in `container` and tries again by itself, backing off to 10 s. Returns null after showing an error that
 * a retry cannot mend (no such job, no session). */
export async function loadJob(jobId, container) {
  for (let delay = 1000; ; delay = Math.min(delay * 2, 10000)) {
    try {
      const detail = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
      delete document.body.dataset.retrying;
      return detail;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        renderError(container, new Error(`No job ${jobId}.`));
        return null;
      }
      if (error instanceof ApiError && error.status < 500) {
        renderError(container, error);
        return null;
      }
      renderError(container, new Error(`${error.message} (trying again in ${delay / 1000} s)`));
      document.body.dataset.retrying = "true";
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

/** A message strip at the top of the page (errors, a lost session, the backend being down). */
export function showBanner(message, kind = "error") {
  let banner = document.getElementById("banner");
  if (!banner) {
    banner = el("div", { id: "banner", role: "status" });
    document.querySelector("main")?.prepend(banner);
  }
  banner.className = `banner ${kind}`;
  banner.textContent = message;
  banner.hidden = !message;
}

export function clearBanner() {
  const banner = document.getElementById("banner");
  if (banner) banner.hidden = true;
}

/** The shared header: product name and navigation, the current page marked. */
export function header(current) {
  const links = [
    ["jobs", "/", "Jobs"],
    ["compare", "/compare", "Compare"],
    ["new", "/new", "New job"],
  ];
  const nav = el(
    "nav",
    {},
    links.map(([id, href, label]) => el("a", { href, class: id === current ? "current" : "", text: label })),
  );
  const logout = el("button", { type: "button", class: "logout", text: "Log out" });
  logout.addEventListener("click", async () => {
    try {
      await api("/logout", { method: "POST" });
    } catch {
      // the session may have ended already: either way it is gone
    }
    window.location.assign("/");
  });
  const top = el(
    "header",
    { class: "top" },
    el("a", { class: "brand", href: "/", text: "Training platform" }),
    nav,
    logout,
  );
  document.body.prepend(top);
}

export function statusBadge(status) {
  const name = String(status || "UNKNOWN");
  return el("span", { class: `status status-${name.toLowerCase()}`, text: name, "data-status": name });
}

export const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/** 3 s, 4 min 5 s, 2 h 3 min, 3 d 4 h. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function formatAge(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return `${formatDuration(seconds)} ago`;
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** A metric value with 4 significant digits (integers as they are). */
export function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") {
    // Non-finite values arrive as "NaN", "Infinity", "-Infinity".
    if (value === "Infinity") return "∞";
    if (value === "-Infinity") return "−∞";
    if (value === "NaN") return "NaN";
    value = Number(value);
  }
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "∞";
  if (value === -Infinity) return "−∞";
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(3);
  return String(Number(value.toPrecision(4)));
}

/** A job's duration: the server's duration_s, or counting live from started_at while it runs. */
export function jobDuration(job) {
  if (job.started_at && !job.ended_at && !TERMINAL.has(job.status)) {
    return (Date.now() - Date.parse(job.started_at)) / 1000;
  }
  return job.duration_s;
}

export function jobName(job) {
  return job.display_name || job.job_id;
}

/** {a: {b: 1}} -> [["a.b", 1]]; arrays and scalars are leaves (arrays as JSON). */
export function flatten(value, prefix = "", out = []) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value).sort();
    if (keys.length === 0 && prefix) out.push([prefix, "{}"]);
    for (const key of keys) flatten(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else if (prefix) {
    out.push([prefix, Array.isArray(value) ? JSON.stringify(value) : value]);
  }
  return out;
}

/** Spec fields whose 0 stands for a default (see their comments in protos/trainingplatform/common/v1/common.proto),
 * with what it stands for. A 0 elsewhere is a value (num_workers 0: the data loads in the training process). */
const ZERO_MEANS = new Map([
  ["model.num_classes", "from the data set"],
  ["model.image_size", "the model's default"],
  ["training.batch_size", "the trainer's default"],
  ["training.learning_rate", "the trainer's default"],
  ["training.log_every_n_steps", "the trainer's default"],
]);

/** Whether the spec field at `path` was left to its default: no value, an empty string, or a 0 that means it. */
export function isUnsetSpecValue(path, value) {
  return value === null || value === undefined || value === "" || (value === 0 && ZERO_MEANS.has(path));
}

/** A spec value as text; `path` (`training.batch_size`) says what a 0 stands for. */
export function formatSpecValue(value, path = "") {
  if (value === 0 && ZERO_MEANS.has(path)) return `0 (${ZERO_MEANS.get(path)})`;
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value === "" ? "\u2014" : value;
  return typeof value === "number" ? formatValue(value) : String(value);
}

/** Shows a thrown error where the page's content would be. */
export function renderError(container, error) {
  container.replaceChildren(el("p", { class: "error-text", text: error.message || String(error) }));
}

const SI = [
  [1e12, "T"],
  [1e9, "G"],
  [1e6, "M"],
  [1e3, "k"],
];

/** Past this, a tick is written with its exponent (1e15, 2.5e30): in T it would be a row of digits. */
const TICK_EXPONENT_FROM = 1e15;

/** An axis tick: short enough to sit beside the chart (12.5k, 1.53G, 0.0025, 1e-5, 2.5e17). */
export function formatTick(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  const abs = Math.abs(value);
  if (abs >= TICK_EXPONENT_FROM) return Number(value.toPrecision(3)).toExponential().replace("e+", "e");
  for (const [size, suffix] of SI) {
    if (abs >= size) return `${Number((value / size).toPrecision(3))}${suffix}`;
  }
  if (abs !== 0 && abs < 1e-3) return value.toExponential(1).replace("e-", "e-").replace(".0e", "e");
  return String(Number(value.toPrecision(3)));
}
