// New job: framework (those the backend can run), model, dataset, epochs and advanced_config JSON. The backend's INVALID_ARGUMENT message
// (suggestions included), or its NOT_FOUND (a dataset path the trainer does not have), is shown beside the field it
// concerns (the API's error.field).

import { ApiError, api, el, header } from "./common.js";

const main = document.getElementById("main");

// Which input an error field path concerns; the most specific rule first.
const FIELD_RULES = [
  [/image_size/, "image_size"],
  [/batch_size/, "batch_size"],
  [/epochs/, "epochs"],
  [/display_name/, "display_name"],
  [/^(spec\.)?advanced|advanced_config|extra/, "advanced_config"],
  [/model/, "model"],
  [/dataset/, "dataset"],
  [/framework/, "framework"],
];

export function inputFor(fieldPath) {
  if (!fieldPath) return null;
  for (const [pattern, name] of FIELD_RULES) if (pattern.test(fieldPath)) return name;
  return null;
}

const FIELDS = [
  { name: "framework", label: "Framework", hint: "timm (classification) or ultralytics (detection)", kind: "framework" },
  { name: "model", label: "Model", hint: "e.g. resnet18, yolov8n.pt", placeholder: "resnet18", required: true },
  { name: "dataset", label: "Dataset", hint: "a built-in name (digits, coco8) or a path", placeholder: "digits", required: true },
  { name: "epochs", label: "Epochs", type: "number", min: "1", value: "3", required: true },
  { name: "display_name", label: "Name", hint: "optional", placeholder: "my experiment" },
  { name: "image_size", label: "Image size", type: "number", min: "0", hint: "optional, pixels" },
  { name: "batch_size", label: "Batch size", type: "number", min: "0", hint: "optional" },
  { name: "advanced_config", label: "advanced_config", hint: "JSON object, e.g. {\"optimizer\": \"adamw\", \"extra\": {…}}", kind: "json" },
];

const inputs = new Map();
const errors = new Map();

/** The frameworks the platform ships trainers for: one the backend cannot run is listed disabled, with why. */
const KNOWN_FRAMEWORKS = ["timm", "ultralytics"];
const frameworkNote = el("p", { class: "muted small", id: "framework-note" });

function control(field) {
  if (field.kind === "framework") {
    // loadFrameworks() fills it with what the backend can run.
    return el("select", { id: field.name, name: field.name }, el("option", { value: "", text: "Loading…" }));
  }
  if (field.kind === "json") {
    return el("textarea", { id: field.name, name: field.name, spellcheck: "false", placeholder: "{}" });
  }
  return el("input", {
    id: field.name,
    name: field.name,
    type: field.type || "text",
    min: field.min,
    value: field.value,
    placeholder: field.placeholder,
    required: field.required,
    autocomplete: "off",
  });
}

function clearErrors() {
  for (const [name, box] of errors) {
    box.textContent = "";
    inputs.get(name).classList.remove("invalid");
    inputs.get(name).removeAttribute("aria-invalid");
  }
  formError.textContent = "";
}

function showError(name, message) {
  const box = name ? errors.get(name) : null;
  if (!box) {
    formError.textContent = message;
    return;
  }
  box.textContent = message;
  const input = inputs.get(name);
  input.classList.add("invalid");
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

/** A random request id: crypto.randomUUID where the page is a secure context, else 128 random bits in hex. */
function newRequestId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// One request id per filled form (CreateJob's key): a second submit of the same form, a double click or a retry
// after a lost answer, gets the job the first one created instead of a second job. A created job or an edit of
// the form starts a new one.
let requestId = newRequestId();

function body() {
  const value = (name) => inputs.get(name).value.trim();
  const dataset = value("dataset");
  const payload = {
    framework: value("framework"),
    model: value("model"),
    dataset: dataset.includes("/") ? { path: dataset } : { name: dataset },
    epochs: Number(value("epochs")),
    display_name: value("display_name"),
    request_id: requestId,
  };
  if (value("image_size")) payload.image_size = Number(value("image_size"));
  if (value("batch_size")) payload.batch_size = Number(value("batch_size"));
  const advanced = value("advanced_config");
  if (advanced) {
    let parsed;
    try {
      parsed = JSON.parse(advanced);
    } catch (error) {
      throw new ApiError(400, { error: { message: `advanced_config is not valid JSON: ${error.message}`, field: "advanced_config" } });
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new ApiError(400, { error: { message: "advanced_config must be a JSON object", field: "advanced_config" } });
    }
    payload.advanced_config = parsed;
  } else payload.advanced_config = {};
  return payload;
}

const formError = el("p", { class: "error-text", id: "form-error", role: "alert" });
// Disabled until loadFrameworks() has filled the framework select: a create meanwhile would send no framework.
const submit = el("button", { type: "submit", class: "button primary", id: "submit", text: "Create job", disabled: true });
const form = el("form", { class: "new-job", id: "new-job", novalidate: true });

for (const field of FIELDS) {
  const input = control(field);
  const error = el("div", { class: "field-error", id: `${field.name}-error`, role: "alert", "data-field": field.name });
  input.setAttribute("aria-describedby", error.id);
  inputs.set(field.name, input);
  errors.set(field.name, error);
  form.append(
    el("label", { for: field.name }, field.label, field.hint ? el("span", { class: "hint", text: field.hint }) : null),
    input,
    error,
  );
}
form.append(formError, el("div", { class: "form-actions" }, submit, el("a", { href: "/", text: "Back to jobs" })));
errors.get("framework").after(frameworkNote);

/** Offers the frameworks the backend dispatches jobs to (GET /api/frameworks: a trainer service is configured for
 * each; CreateJob refuses any other); a known framework it cannot run is listed disabled, saying why. One whose
 * trainers do not answer now is still offered (its job waits QUEUED for one), saying so. When the list cannot be
 * read, the known frameworks are offered and the create says whether the backend runs them. */
async function loadFrameworks() {
  const select = inputs.get("framework");
  let listed;
  try {
    listed = (await api("/api/frameworks")).frameworks;
  } catch (error) {
    select.replaceChildren(...KNOWN_FRAMEWORKS.map((name) => el("option", { value: name, text: name })));
    frameworkNote.textContent = `Could not read which frameworks the backend runs (${error.message}).`;
    submit.disabled = false;
    return;
  }
  const offered = new Set(listed.map((framework) => framework.name));
  const options = listed.map((framework) =>
    el("option", {
      value: framework.name,
      text: framework.reachable_trainers
        ? framework.name
        : `${framework.name} (no trainer answers now: the job waits for one)`,
      title: framework.unreachable_reason || null,
    }),
  );
  const missing = KNOWN_FRAMEWORKS.filter((name) => !offered.has(name));
  for (const name of missing) {
    options.push(el("option", { value: name, text: `${name} (unavailable: no trainer configured)`, disabled: true }));
  }
  select.replaceChildren(...options);
  select.value = listed.length ? listed[0].name : "";
  submit.disabled = !listed.length;
  if (!listed.length) {
    frameworkNote.textContent =
      "The backend has no trainer service configured, so it can run no job: start the stack with `tp up`, or set " +
      "the backend's TP_TRAINERS.";
  } else if (missing.length) {
    frameworkNote.textContent = `${missing.join(" and ")}: no trainer service for it is configured on the backend.`;
  }
}

form.addEventListener("input", () => {
  requestId = newRequestId();
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  submit.disabled = true;
  let created = false;
  try {
    const answer = await api("/api/jobs", { method: "POST", body: body() });
    created = true;
    requestId = newRequestId();
    location.href = `/jobs/${encodeURIComponent(answer.job.job_id)}`;
  } catch (error) {
    if (error instanceof ApiError) showError(inputFor(error.field), error.message);
    else showError(null, String(error));
  } finally {
    // After a create the button stays disabled while the job's page loads: a click meanwhile would create again.
    if (!created) submit.disabled = false;
  }
});

header("new");
main.replaceChildren(el("div", { class: "page-head" }, el("h1", { text: "New job" })), form);
loadFrameworks();
