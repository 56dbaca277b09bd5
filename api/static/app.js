// The PNEURADNET web page: drop radiographs (or ZIP archives of them), follow each job live, then read, sort,
// filter and export the results. Plain modern JavaScript: no dependencies, no build step, nothing fetched from
// anywhere but this service. Every call to the API goes through `api()`, which asks for the API key when needed.
"use strict";

/** How often an unfinished batch is polled while the page is visible. */
const POLL_INTERVAL_MS = 1000;
/** How often it is polled while the tab is in the background. */
const HIDDEN_POLL_INTERVAL_MS = 5000;
/** Longest wait between polls after errors (the wait doubles from POLL_INTERVAL_MS, or follows Retry-After). */
const MAX_RETRY_MS = 30000;
/** Jobs per GET /batches/{id} page: the API's maximum. */
const PAGE_SIZE = 1000;
/** The API tells an archive from an image by these first bytes, not by its name; the page does the same. */
const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];
/** The "Show" filter's value for files without a result. */
const FAILED_FILTER = "__failed";
/** How opaque a heatmap is over its thumbnail at first, in percent (the PNG itself already blends it). */
const HEATMAP_OPACITY = 100;
/** Most files the API's multipart parser takes in one request, whatever MAX_FILES_PER_REQUEST says. */
const MAX_PARTS = 1000;
/** The API's default MAX_UPLOAD_BYTES, for a page served without its settings (e.g. as /static/index.html). */
const DEFAULT_MAX_UPLOAD_BYTES = 256 * 1024 * 1024;
/** A generous bound on what multipart adds around each file (boundary, headers, its name), in bytes: the API's
 * MAX_UPLOAD_BYTES counts the whole request body. */
const PART_OVERHEAD_BYTES = 1024;

const FINISHED = new Set(["succeeded", "failed", "canceled", "expired"]);
/** The order of the counts in the progress line. */
const PROGRESS_ORDER = ["running", "queued", "uploading", "succeeded", "failed", "expired", "canceled"];
const STATUS_RANK = { failed: 0, expired: 0, canceled: 1, uploading: 2, queued: 2, running: 2, succeeded: 3 };

/** What the page must know of the service's settings: index.html carries them (filled in by api/routes/page.py). */
const service = readServiceSettings();

/** Names of the model's labels per language, as its manifest gives them: { model name: { language: { label: name } } }
 * (filled in by api/routes/page.py). A label without one is shown as it is. */
const displayNames = readDisplayNames();

function readServiceSettings() {
  const data = document.body.dataset;
  const positive = (text, fallback) => (Number(text) > 0 ? Number(text) : fallback);
  return {
    explainEnabled: data.explainEnabled !== "false",
    maxFiles: Math.min(positive(data.maxFilesPerRequest, MAX_PARTS), MAX_PARTS),
    maxBytes: positive(data.maxUploadBytes, DEFAULT_MAX_UPLOAD_BYTES),
  };
}

function readDisplayNames() {
  try {
    return JSON.parse(document.body.dataset.displayNames) || {};
  } catch {
    return {}; // a page served without its settings
  }
}

// --- Languages -------------------------------------------------------------------------------------------------
// Every text the page shows comes from a catalogue (static/i18n/<language>.json, the same keys in each). The API
// writes the page in the language it chose from Accept-Language or ?lang=, with that catalogue embedded; a choice
// made with the switch is kept in localStorage and applied at the next visit, unless ?lang= names another. The API's
// own problem details stay English: the page shows a text of its own for each problem type, then the detail.

const LANGUAGES = ["en", "es"];
/** The localStorage item that keeps the language chosen with the switch. */
const LANGUAGE_ITEM = "pneuradnet-language";

const i18n = { language: "en", texts: {}, plurals: null, percent: null, byName: null, wanted: "" };

function setLanguage(language, texts) {
  Object.assign(i18n, {
    language,
    texts,
    plurals: new Intl.PluralRules(language),
    percent: new Intl.NumberFormat(language, { style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1 }),
    byName: new Intl.Collator(language, { numeric: true, sensitivity: "base" }),
  });
}

/** The text of `key`, its `{name}`s filled in from `values`. */
function t(key, values = {}) {
  const text = i18n.texts[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (match, name) => (name in values ? String(values[name]) : match));
}

/** The text of `key` for the number `count` (`key.one`, `key.other`, … as the language's plural rules say). */
function tPlural(key, count, values = {}) {
  const form = `${key}.${i18n.plurals.select(count)}`;
  return t(form in i18n.texts ? form : `${key}.other`, { count, ...values });
}

/** The catalogue embedded in the page by the API, or null (a page served without it). */
function embeddedCatalogue() {
  try {
    return JSON.parse(document.getElementById("catalogue").textContent);
  } catch {
    return null;
  }
}

async function fetchCatalogue(language) {
  const response = await fetch(`static/i18n/${language}.json`);
  if (!response.ok) throw new Error(`no catalogue for ${language}`);
  return response.json();
}

/** The language the page should be in: ?lang= first, then the one chosen with the switch, then the API's choice. */
function wantedLanguage() {
  const requested = new URLSearchParams(window.location.search).get("lang");
  if (LANGUAGES.includes(requested)) return requested;
  const stored = localStorage.getItem(LANGUAGE_ITEM);
  if (LANGUAGES.includes(stored)) return stored;
  return LANGUAGES.includes(document.documentElement.lang) ? document.documentElement.lang : LANGUAGES[0];
}

/** Puts the page in `language`, from its catalogue; everything already shown is written again. If the catalogue
 * cannot be fetched, the page stays as it is. */
async function showLanguage(language) {
  i18n.wanted = language;
  let texts;
  try {
    texts = await fetchCatalogue(language);
  } catch {
    return;
  }
  if (i18n.wanted !== language) return; // another language was chosen while this one was on its way
  setLanguage(language, texts);
  translatePage();
  for (const row of state.rows) row.dirty = true;
  for (const item of elements.values()) item.remove();
  elements.clear(); // thumbnails' placeholders are written once, when a row's element is made
  state.labels = [];
  renderRefusals();
  render();
}

/** The switch: the choice is remembered, and replaces a ?lang= in the address so that a reload keeps it. */
async function chooseLanguage(language) {
  localStorage.setItem(LANGUAGE_ITEM, language);
  const url = new URL(window.location.href);
  if (url.searchParams.has("lang")) {
    url.searchParams.set("lang", language);
    history.replaceState(history.state, "", url);
  }
  await showLanguage(language);
}

/** The texts of the page's own elements (data-i18n: text, data-i18n-placeholder: placeholder). */
function translatePage() {
  document.documentElement.lang = i18n.language;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
  for (const button of document.querySelectorAll("[data-language]")) {
    button.setAttribute("aria-pressed", String(button.dataset.language === i18n.language));
  }
}

/** How the page names `label` of `model`: the manifest's name for it in the page's language, else the label. */
function labelName(model, label) {
  return displayNames[model?.name]?.[i18n.language]?.[label] ?? label;
}

/** The page's own words for a problem (RFC 9457, as the API answers or a failed job carries): one text per type. */
function problemReason(problem) {
  const key = `problem.${problemKind(problem)}`;
  return key in i18n.texts ? t(key) : t("problem.other", { status: problem.status });
}

function problemKind(problem) {
  return (problem.type || "").split(":").pop();
}

/** A problem as a paragraph: the page's words for its type, then the API's own detail (English, marked so). */
function renderProblem(className, problem, prefixKey = "") {
  const reason = problemReason(problem);
  const paragraph = element("p", { className }, prefixKey ? t(prefixKey, { reason }) : reason);
  if (problem.detail) {
    paragraph.append(" ", element("span", { className: "problem-detail" }, t("problem.detail"), " ",
      element("span", { lang: "en" }, sentence(problem.detail))));
  }
  return paragraph;
}

// --- The API ---------------------------------------------------------------------------------------------------

class ApiError extends Error {
  /** `type` is the problem's (urn:pneuradnet:problem:<kind>); "no-answer" when the service was not reached. */
  constructor(status, type, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.type = type;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

/** Calls the API at `path` (relative to the page, so the page works behind a path prefix too) and returns its
 * JSON (or, with `blob`, the body as a Blob); an error answer (RFC 9457 problem+json) or no answer at all is thrown
 * as an ApiError with its detail. A 401 asks the user for the API key and calls again with it. */
async function api(path, options = {}) {
  for (;;) {
    const sentKey = storedKey();
    try {
      const data = await call(path, options);
      keyWorked(sentKey);
      return data;
    } catch (error) {
      if (error.status !== 401) {
        keyWorked(sentKey);
        throw error;
      }
      await askForKey(error, sentKey);
    }
  }
}

/** One request to the API, without asking for a key. */
async function call(path, { method = "GET", body, blob = false } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      body,
      cache: "no-store",
      headers: { Accept: "application/json, application/problem+json", ...authHeaders() },
    });
  } catch {
    throw new ApiError(0, "no-answer", "");
  }
  if (response.ok && blob) return response.blob();
  const isJson = (response.headers.get("Content-Type") || "").includes("json");
  const data = isJson ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const detail = data?.detail || `${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, data?.type || "", detail, Number(response.headers.get("Retry-After")) || null);
  }
  return data;
}

/** Every job of a batch, following the pages. */
async function fetchBatchJobs(batchId) {
  const jobs = [];
  let token = null;
  do {
    const query = new URLSearchParams({ page_size: String(PAGE_SIZE), ...(token ? { page_token: token } : {}) });
    const page = await api(`batches/${encodeURIComponent(batchId)}?${query}`);
    jobs.push(...page.jobs);
    token = page.next_page_token;
  } while (token);
  return jobs;
}

// --- The API key ---------------------------------------------------------------------------------------------
// When the service runs with API_KEYS, a call without a valid key is answered 401. The page then asks for the key
// in a small form (never window.prompt), keeps it in sessionStorage (this tab only, gone when the tab closes; never
// localStorage, never the URL, never the console) and makes the call again. Every call refused meanwhile waits for
// the same answer. The form stays up until a call made with the new key gets past the check, so a wrong key is
// told without the form flickering away and back.

/** The sessionStorage item that holds the key. */
const KEY_ITEM = "pneuradnet-api-key";

const keyPrompt = {
  waiters: [], // { resolve, reject, error } of each call waiting for a key
  needed: false, // the API has asked for a key in this tab (or one is kept from before a reload)
  returnFocus: null, // where the focus was before the form took it
};

function storedKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

/** Headers that authenticate a request: the Bearer key, once the user has given one. */
function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Resolves when there is a key to try; rejects with the call's own error if the user cancels. `sentKey` is the key
 * the refused call carried ("" for none). */
function askForKey(error, sentKey) {
  keyPrompt.needed = true;
  if (!keyPrompt.waiters.length) {
    if (storedKey() !== sentKey) return Promise.resolve(); // a newer key was given meanwhile: try that one
    if (sentKey) forgetKey(); // refused: it is not kept
    showKeyForm(sentKey ? t("key.invalid") : "");
  }
  return new Promise((resolve, reject) => keyPrompt.waiters.push({ resolve, reject, error }));
}

/** A call made with the current key got an answer other than 401: the key is good, the form can go. */
function keyWorked(sentKey) {
  if (sentKey && sentKey === storedKey() && !keyPrompt.waiters.length) hideKeyForm();
}

function showKeyForm(problemText) {
  const form = document.getElementById("key-form");
  const problem = document.getElementById("key-error");
  const input = document.getElementById("key-input");
  if (form.hidden) keyPrompt.returnFocus = document.activeElement;
  problem.textContent = problemText;
  problem.hidden = !problemText;
  form.hidden = false;
  document.getElementById("key-submit").disabled = false;
  input.value = "";
  input.focus();
}

function hideKeyForm() {
  const form = document.getElementById("key-form");
  if (form.hidden) return;
  const hadFocus = form.contains(document.activeElement);
  form.hidden = true;
  if (hadFocus && keyPrompt.returnFocus?.isConnected) keyPrompt.returnFocus.focus();
  keyPrompt.returnFocus = null;
}

function useKey(event) {
  event.preventDefault();
  const input = document.getElementById("key-input");
  const key = input.value.trim();
  input.value = "";
  if (!key) {
    input.focus();
    return;
  }
  sessionStorage.setItem(KEY_ITEM, key);
  document.getElementById("key-submit").disabled = true; // until the calls made with it have an answer
  renderForgetKey();
  for (const waiter of keyPrompt.waiters.splice(0)) waiter.resolve();
}

/** The calls waiting for a key fail with their own 401. */
function cancelKeyForm() {
  for (const waiter of keyPrompt.waiters.splice(0)) waiter.reject(waiter.error);
  hideKeyForm();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
  renderForgetKey();
}

function renderForgetKey() {
  document.getElementById("forget-key").hidden = !storedKey();
}

// --- State -----------------------------------------------------------------------------------------------------
// A row is one tile of the list: an image file (with its thumbnail), a ZIP archive waiting for its jobs, or a job
// that came out of an archive. `state.rows` is kept in upload order, which is the batch's (and the CSV's) order.

const state = {
  rows: [],
  batches: [],
  labels: [],
  refused: [], // { name, problem } of each file the API refused, in the drops sent since none was in flight
  dropped: 0, // files in those drops
  sending: 0, // drops whose requests are not all answered yet
  nextKey: 0,
  generation: 0, // bumped by "Clear results": polling loops of an older generation stop
};
const rowsByJobId = new Map();
const elements = new Map(); // row key -> <li>

function newRow(fields) {
  return { key: state.nextKey++, kind: "image", name: "", thumb: null, archive: "", status: "uploading",
    job: null, note: "", problem: null, heatmap: null, dirty: true, ...fields };
}

function setJob(row, job) {
  row.job = job;
  row.status = job.status;
  row.problem = job.error || null;
  row.dirty = true;
  if (job.result?.heatmap_url && !row.heatmap) {
    row.heatmap = { url: null, requested: false, error: "", shown: true, opacity: HEATMAP_OPACITY };
  }
  rowsByJobId.set(job.id, row);
}

// --- Uploading -------------------------------------------------------------------------------------------------

async function isZip(file) {
  const head = new Uint8Array(await file.slice(0, ZIP_MAGIC.length).arrayBuffer());
  return ZIP_MAGIC.every((byte, i) => head[i] === byte);
}

// A drop is sent in several requests, one after the other: the loose images together, in as few requests as the
// service's limits allow, then each ZIP archive in a request of its own. The API refuses a whole request when one
// archive in it is bad (unreadable, a ZIP bomb, too big), so an archive sent alone sinks nothing but itself. Each
// request is a batch of its own; a refused one is listed with the API's reason, and its files' tiles go.

async function submit(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  if (!state.sending) { // the refusals listed so far were of drops already finished: they have been read
    state.refused = [];
    state.dropped = 0;
  }
  state.dropped += files.length;
  state.sending += 1;
  renderRefusals();
  const generation = state.generation;
  try {
    await send(files, generation);
  } finally {
    if (generation === state.generation) state.sending -= 1;
  }
}

async function send(files, generation) {
  const zipFlags = await Promise.all(files.map(isZip));
  if (generation !== state.generation) return;
  const images = files.filter((_, i) => !zipFlags[i]).map((file) => ({ file,
    row: newRow({ name: file.name, thumb: URL.createObjectURL(file) }) }));
  const archives = files.filter((_, i) => zipFlags[i]).map((file) => ({ file,
    row: newRow({ kind: "zip", name: file.name, note: "result.unpacking" }) }));
  state.rows.push(...images.map((part) => part.row), ...archives.map((part) => part.row));
  render();

  const explain = service.explainEnabled && document.getElementById("explain").checked;
  const requests = [...imageRequests(images), ...archives.map((archive) => [archive])];
  for (const [i, parts] of requests.entries()) {
    const error = await upload(parts, explain, generation);
    if (generation !== state.generation) return;
    if (error?.status === 401) { // the user canceled the key form: the rest would only ask again
      refuse(requests.slice(i + 1).flat(), error);
      return;
    }
  }
}

/** The loose images in requests of at most MAX_FILES_PER_REQUEST files and MAX_UPLOAD_BYTES, in drop order. An
 * image over the byte limit goes alone, and the API says why it is refused. */
function imageRequests(images) {
  const requests = [];
  let request = null;
  let bytes = 0;
  for (const image of images) {
    const size = image.file.size + PART_OVERHEAD_BYTES;
    if (!request || request.length >= service.maxFiles || bytes + size > service.maxBytes) {
      request = [];
      bytes = 0;
      requests.push(request);
    }
    request.push(image);
    bytes += size;
  }
  return requests;
}

/** Sends one request of `parts` ({ file, row }) and follows its batch; returns the ApiError if it was refused. */
async function upload(parts, explain, generation) {
  const form = new FormData();
  for (const { file } of parts) form.append("files", file, file.name);
  let answer;
  try {
    answer = await api(explain ? "jobs?explain=true" : "jobs", { method: "POST", body: form });
  } catch (error) {
    if (generation === state.generation) refuse(parts, error);
    return error;
  }
  if (generation !== state.generation) return null;
  // A request holds loose images or one archive. Images get one job each, in order (the API keeps it).
  const imageRows = parts.map((part) => part.row).filter((row) => row.kind === "image");
  const archiveRows = parts.map((part) => part.row).filter((row) => row.kind === "zip");
  imageRows.forEach((row, i) => setJob(row, answer.jobs[i]));
  replaceArchiveRows(archiveRows, answer.jobs.slice(imageRows.length));
  const batch = { id: answer.batch_id, jobIds: answer.jobs.map((job) => job.id) };
  state.batches.push(batch);
  render();
  pollBatch(batch, generation);
  return null;
}

/** Nothing of a refused request was queued: its tiles go, and its files are listed with the API's problem. */
function refuse(parts, problem) {
  removeRows(parts.map((part) => part.row));
  state.refused.push(...parts.map((part) => ({ name: part.file.name, problem })));
  renderRefusals();
  render();
}

/** Puts one row per job in place of the archives' placeholder tiles. */
function replaceArchiveRows(archiveRows, jobs) {
  if (!archiveRows.length) return;
  const archive = archiveRows.length === 1 ? archiveRows[0].name : "";
  const jobRows = jobs.map((job) => {
    const row = newRow({ kind: "member", name: job.filename, archive });
    setJob(row, job);
    return row;
  });
  const at = state.rows.indexOf(archiveRows[0]);
  state.rows = state.rows.filter((row) => !archiveRows.includes(row));
  state.rows.splice(at, 0, ...jobRows);
  for (const row of archiveRows) removeElement(row);
}

// --- Polling ---------------------------------------------------------------------------------------------------
// Why poll the batch every second rather than long-poll each job (GET /jobs/{id}?wait=20): one request covers
// the whole batch whatever its size, where a drop of 500 images would hold 500 long-polls open, far more than the
// six connections a browser gives one host over HTTP/1.1, queueing the next upload behind them. The batch answer
// also carries every job's result, so nothing else is fetched; a second of delay is nothing next to reading an
// image; and the loop stops as soon as every job has finished (it slows down while the tab is hidden).

async function pollBatch(batch, generation) {
  let delay = POLL_INTERVAL_MS;
  for (;;) {
    await sleep(document.hidden ? Math.max(delay, HIDDEN_POLL_INTERVAL_MS) : delay);
    if (generation !== state.generation) return;
    let jobs;
    try {
      jobs = await fetchBatchJobs(batch.id);
    } catch (error) {
      if (generation !== state.generation) return;
      if (error.status === 404) {
        expire(batch.jobIds, error);
        return;
      }
      delay = error.retryAfter ? error.retryAfter * 1000 : Math.min(MAX_RETRY_MS, delay * 2);
      showConnectionWarning(t("progress.refresh_failed",
        { reason: problemReason(error), seconds: Math.round(delay / 1000) }));
      continue;
    }
    if (generation !== state.generation) return;
    showConnectionWarning("");
    delay = POLL_INTERVAL_MS;
    for (const job of jobs) {
      const row = rowsByJobId.get(job.id);
      if (row && (row.job.status !== job.status || row.job.finished_at !== job.finished_at)) setJob(row, job);
    }
    const seen = new Set(jobs.map((job) => job.id));
    expire(batch.jobIds.filter((id) => !seen.has(id)), null);
    render();
    if (batch.jobIds.every((id) => FINISHED.has(rowsByJobId.get(id)?.status))) return;
  }
}

/** The jobs are gone from the service: with the problem that said so, or noticed missing from their batch. */
function expire(jobIds, problem) {
  for (const id of jobIds) {
    const row = rowsByJobId.get(id);
    if (row && !FINISHED.has(row.status)) {
      Object.assign(row, { status: "expired", problem, note: problem ? "" : "result.expired", dirty: true });
    }
  }
  render();
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- Sorting and filtering -------------------------------------------------------------------------------------

const SORTS = {
  upload: () => 0,
  class: (a, b) => compareResults(a, b, (x, y) => i18n.byName.compare(labelName(x.model, x.predicted_class),
    labelName(y.model, y.predicted_class))
    || y.confidence - x.confidence),
  "confidence-desc": (a, b) => compareResults(a, b, (x, y) => y.confidence - x.confidence),
  "confidence-asc": (a, b) => compareResults(a, b, (x, y) => x.confidence - y.confidence),
  status: (a, b) => STATUS_RANK[a.status] - STATUS_RANK[b.status],
};

/** Rows with a result first, ordered by `compare`; the others after them, in upload order. */
function compareResults(a, b, compare) {
  const x = a.job?.result;
  const y = b.job?.result;
  if (x && y) return compare(x, y);
  return (x ? 0 : 1) - (y ? 0 : 1);
}

function visibleRows() {
  const sort = document.getElementById("sort").value;
  const shown = document.getElementById("class-filter").value;
  const belowText = document.getElementById("confidence-below").value;
  const below = belowText === "" ? null : Number(belowText) / 100;
  const rows = state.rows.filter((row) => {
    const result = row.job?.result;
    if (shown === FAILED_FILTER && !["failed", "expired", "canceled"].includes(row.status)) return false;
    if (shown && shown !== FAILED_FILTER && result?.predicted_class !== shown) return false;
    if (below !== null && !Number.isNaN(below) && !(result && result.confidence < below)) return false;
    return true;
  });
  // Array.prototype.sort is stable, so ties (and rows without results) keep their upload order.
  return rows.sort(SORTS[sort] || SORTS.upload);
}

// --- Rendering -------------------------------------------------------------------------------------------------

function render() {
  const section = document.getElementById("results-section");
  section.hidden = state.rows.length === 0;
  updateLabels();
  for (const row of state.rows) {
    if (row.dirty) renderRow(row);
  }
  const list = document.getElementById("results");
  const shown = visibleRows();
  const wanted = shown.map((row) => elements.get(row.key));
  const current = [...list.children];
  if (wanted.length !== current.length || wanted.some((element, i) => element !== current[i])) {
    list.replaceChildren(...wanted);
  }
  document.getElementById("shown-count").textContent = state.rows.length === shown.length
    ? "" : t("results.shown", { shown: shown.length, total: state.rows.length });
  renderProgress();
  renderExports();
}

function renderRow(row) {
  row.dirty = false;
  let item = elements.get(row.key);
  if (!item) {
    item = element("li", { className: "result" });
    item.append(renderThumb(row), element("div", { className: "result-body" }));
    elements.set(row.key, item);
  }
  item.dataset.status = row.status;
  item.dataset.kind = row.kind;
  if (row.job) item.dataset.jobId = row.job.id;

  const heading = element("div", { className: "result-head" },
    element("h3", { className: "filename" }, ...breakable(row.name)),
    element("span", { className: `status status--${row.status}` }, statusText(row)));
  const body = [heading];
  if (row.kind === "member" && row.archive) {
    body.push(element("p", { className: "archive" }, t("result.from_archive", { archive: row.archive })));
  }

  const result = row.job?.result;
  if (result) {
    body.push(renderVerdict(result), renderProbabilities(result),
      element("p", { className: "model" }, t("result.model", result.model)));
    if (row.heatmap) body.push(renderHeatmapControls(row));
    else if (result.explanation_error) {
      body.push(element("p", { className: "heatmap-note" },
        t("heatmap.none", { reason: "" }), element("span", { lang: "en" }, sentence(result.explanation_error))));
    }
  } else if (row.problem) {
    body.push(renderProblem("error-detail", row.problem));
  } else if (row.note) {
    const failed = ["failed", "expired"].includes(row.status);
    body.push(element("p", { className: failed ? "error-detail" : "pending-detail" }, t(row.note)));
  }
  item.querySelector(".result-body").replaceChildren(...body);
  if (row.heatmap && !row.heatmap.requested) loadHeatmap(row);
  applyHeatmap(row);
}

// --- Heatmaps --------------------------------------------------------------------------------------------------
// A job submitted with explain has a PNG of its image with the heatmap blended in. It is fetched through `api()`
// (an <img src> could not carry the API key) and laid over the thumbnail; a toggle and a slider fade it in and out.

async function loadHeatmap(row) {
  row.heatmap.requested = true;
  const generation = state.generation;
  try {
    const blob = await api(`jobs/${encodeURIComponent(row.job.id)}/heatmap.png`, { blob: true });
    if (generation !== state.generation) return;
    row.heatmap.url = URL.createObjectURL(blob);
  } catch (error) {
    if (generation !== state.generation) return;
    row.heatmap.error = error;
  }
  row.dirty = true;
  render();
}

function renderHeatmapControls(row) {
  const heatmap = row.heatmap;
  if (heatmap.error) return renderProblem("heatmap-note", heatmap.error, "heatmap.none");
  if (!heatmap.url) return element("p", { className: "heatmap-note" }, t("heatmap.loading"));
  const id = `heatmap-${row.key}`;
  const show = element("input", { type: "checkbox", id: `${id}-show`, checked: heatmap.shown });
  const opacity = element("input", { type: "range", id: `${id}-opacity`, min: "0", max: "100", step: "5",
    value: String(heatmap.opacity), disabled: !heatmap.shown });
  show.addEventListener("change", () => {
    heatmap.shown = show.checked;
    opacity.disabled = !show.checked;
    applyHeatmap(row);
  });
  opacity.addEventListener("input", () => {
    heatmap.opacity = Number(opacity.value);
    applyHeatmap(row);
  });
  return element("div", { className: "heatmap-controls" },
    element("span", { className: "heatmap-control" }, show, element("label", { htmlFor: show.id }, t("heatmap.show"))),
    element("span", { className: "heatmap-control" },
      element("label", { htmlFor: opacity.id }, t("heatmap.opacity")), opacity),
    element("a", { href: heatmap.url, target: "_blank", rel: "noopener" }, t("heatmap.full_size")));
}

/** Puts the heatmap over the thumbnail (or over the placeholder of an image from a ZIP), as the controls say. */
function applyHeatmap(row) {
  const frame = elements.get(row.key)?.querySelector(".thumb");
  if (!frame || !row.heatmap?.url) return;
  let overlay = frame.querySelector(".thumb-heatmap");
  if (!overlay) {
    overlay = element("img", { className: "thumb-heatmap", src: row.heatmap.url,
      alt: t("heatmap.alt", { name: row.name }), decoding: "async" });
    frame.append(overlay);
  }
  overlay.hidden = !row.heatmap.shown;
  overlay.style.opacity = String(row.heatmap.opacity / 100);
}

function renderThumb(row) {
  const frame = element("div", { className: "thumb" });
  if (row.thumb) {
    const image = element("img", { src: row.thumb, alt: "", decoding: "async" });
    image.addEventListener("error", () => frame.replaceChildren(placeholder(t("result.no_preview"))), { once: true });
    frame.append(image);
  } else {
    frame.append(placeholder(t(row.kind === "zip" ? "result.zip" : "result.from_zip")));
  }
  return frame;
}

function placeholder(text) {
  return element("span", { className: "thumb-placeholder" }, text);
}

function renderVerdict(result) {
  return element("p", { className: "verdict" },
    element("span", { className: "predicted-class" }, labelName(result.model, result.predicted_class)),
    element("span", { className: "confidence" },
      t("result.confidence", { confidence: i18n.percent.format(result.confidence) })));
}

/** One bar per label, in the model's label order; the labels come from the result (named as the model's manifest
 * says in the page's language), never from the page. */
function renderProbabilities(result) {
  const list = element("ul", { className: "probabilities", ariaLabel: t("result.probabilities") });
  result.labels.forEach((label, i) => {
    const probability = result.predictions[i];
    const fill = element("span", { className: "bar-fill" });
    fill.style.width = `${Math.max(0, Math.min(1, probability)) * 100}%`;
    const item = element("li", { className: "probability" },
      element("span", { className: "probability-label" }, labelName(result.model, label)),
      element("span", { className: "bar", ariaHidden: "true" }, fill),
      element("span", { className: "probability-value" }, i18n.percent.format(probability)));
    if (label === result.predicted_class) item.classList.add("is-predicted");
    list.append(item);
  });
  return list;
}

function statusText(row) {
  if (row.kind === "zip" && row.status === "uploading") return t("status.uploading_archive");
  return t(`status.${row.status}`);
}

/** A long file name may wrap after its separators (`person1946_`, `study/`) rather than mid-word. */
function breakable(name) {
  return name.split(/(?<=[_\-./])/).flatMap((part, i) => (i ? [document.createElement("wbr"), part] : [part]));
}

/** "not an image: send PNG, JPEG or DICOM" -> "Not an image: send PNG, JPEG or DICOM." */
function sentence(text) {
  const trimmed = text.trim();
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?…]$/.test(capital) ? capital : `${capital}.`;
}

function updateLabels() {
  const names = new Map(); // label -> how the page names it
  for (const result of state.rows.map((row) => row.job?.result).filter(Boolean)) {
    for (const label of result.labels) if (!names.has(label)) names.set(label, labelName(result.model, label));
  }
  const labels = [...names.keys()];
  if (labels.join("\n") === state.labels.join("\n")) return;
  state.labels = labels;
  const select = document.getElementById("class-filter");
  const selected = select.value;
  select.replaceChildren(
    new Option(t("filter.all"), ""),
    ...labels.map((label) => new Option(t("filter.predicted", { label: names.get(label) }), label)),
    new Option(t("filter.failed"), FAILED_FILTER));
  select.value = [...select.options].some((option) => option.value === selected) ? selected : "";
}

function renderProgress() {
  const counts = {};
  for (const row of state.rows) counts[row.status] = (counts[row.status] || 0) + 1;
  const total = state.rows.length;
  const finished = state.rows.filter((row) => FINISHED.has(row.status)).length;
  const progress = document.getElementById("progress");
  progress.max = Math.max(total, 1);
  progress.value = finished;

  const parts = PROGRESS_ORDER.filter((status) => counts[status])
    .map((status) => tPlural(`progress.${status}`, counts[status])).join(", ");
  const text = finished === total
    ? tPlural("progress.all", total, { total, parts })
    : t("progress.some", { finished, total, parts });
  const line = document.getElementById("progress-text");
  // The region is aria-live: write only on change, so a screen reader is not told the same thing every second.
  if (line.textContent !== text) line.textContent = text;
}

function renderExports() {
  const links = state.batches.map((batch, i) => {
    const name = state.batches.length === 1 ? t("export.csv")
      : t("export.csv_batch", { number: i + 1, count: batch.jobIds.length });
    return element("a", { className: "button", href: `batches/${encodeURIComponent(batch.id)}?format=csv`,
      download: `pneuradnet-${batch.id}.csv` }, name);
  });
  const container = document.getElementById("csv-links");
  const names = (nodes) => [...nodes].map((link) => link.textContent).join("\n");
  if (names(container.children) !== names(links)) container.replaceChildren(...links);
  document.getElementById("download-json").disabled = !state.rows.some((row) => row.job);
}

/** The jobs as the API gave them, in upload order, with the notice, as a JSON file made in the browser. */
function downloadJson() {
  const jobs = state.rows.filter((row) => row.job).map((row) => row.job);
  const payload = { notice: noticeText(), exported_at: new Date().toISOString(),
    batch_ids: state.batches.map((batch) => batch.id), jobs };
  saveBlob(new Blob([JSON.stringify(payload, null, 2)], { type: "application/json" }),
    `pneuradnet-results-${timestamp()}.json`);
}

/** A CSV link cannot carry the key: once the API asks for keys, the CSV is fetched through `api()` and saved from
 * a Blob, under the link's own file name. */
async function downloadCsv(event) {
  const link = event.target.closest("a");
  if (!link || !(storedKey() || keyPrompt.needed)) return;
  event.preventDefault();
  let blob;
  try {
    blob = await api(link.getAttribute("href"), { blob: true });
  } catch (error) {
    showConnectionWarning(t("export.csv_failed", { reason: problemReason(error) }));
    return;
  }
  saveBlob(blob, link.download);
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = element("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function noticeText() {
  return t("notice.title");
}

function timestamp() {
  return new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
}

function clearResults() {
  state.generation += 1;
  cancelKeyForm(); // an upload waiting for the key is dropped, not sent later
  for (const row of state.rows) revokeUrls(row);
  state.rows = [];
  state.batches = [];
  rowsByJobId.clear();
  elements.clear();
  document.getElementById("results").replaceChildren();
  showConnectionWarning("");
  Object.assign(state, { refused: [], dropped: 0, sending: 0 });
  renderRefusals();
  render();
  document.getElementById("file-input").focus();
}

function removeRows(rows) {
  state.rows = state.rows.filter((row) => !rows.includes(row));
  for (const row of rows) {
    revokeUrls(row);
    removeElement(row);
  }
}

function revokeUrls(row) {
  if (row.thumb) URL.revokeObjectURL(row.thumb);
  if (row.heatmap?.url) URL.revokeObjectURL(row.heatmap.url);
}

function removeElement(row) {
  elements.get(row.key)?.remove();
  elements.delete(row.key);
}

/** The alert under the drop zone: every refused file of the last drop, each with the reason the API gave. */
function renderRefusals() {
  const box = document.getElementById("upload-error");
  const count = state.refused.length;
  box.hidden = count === 0;
  if (!count) {
    box.replaceChildren();
    return;
  }
  const summary = count < state.dropped
    ? tPlural("refused.some", count, { dropped: state.dropped })
    : tPlural("refused.all", count);
  const list = element("ul", { className: "refused-list", ariaLabel: t("refused.list") },
    ...state.refused.map(({ name, problem }) => {
      const reason = renderProblem("refused-reason", problem);
      return element("li", { className: "refused" },
        element("span", { className: "refused-name" }, ...breakable(name)), ": ", ...reason.childNodes);
    }));
  box.replaceChildren(element("p", { className: "refused-summary" }, summary), list);
  // A long list scrolls in its own box; the keyboard can reach it to scroll it.
  if (list.scrollHeight > list.clientHeight) list.tabIndex = 0;
}

function showConnectionWarning(text) {
  const box = document.getElementById("connection-warning");
  if (box.textContent !== text) box.textContent = text;
  box.hidden = !text;
}

/** A DOM element; text always goes in as text, never as HTML (file names come from users and archives). */
function element(tag, properties = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(properties)) {
    if (name === "ariaLabel") node.setAttribute("aria-label", value);
    else if (name === "ariaHidden") node.setAttribute("aria-hidden", value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

// --- Wiring ----------------------------------------------------------------------------------------------------

function init() {
  const input = document.getElementById("file-input");
  const zone = document.getElementById("dropzone");
  input.addEventListener("change", () => {
    submit(input.files);
    input.value = ""; // picking the same files again is a new upload
  });
  // A file dropped beside the zone would make the browser open it in place of the page.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  let depth = 0; // dragenter/dragleave fire for every child the pointer crosses
  zone.addEventListener("dragenter", () => { depth += 1; zone.classList.add("is-dragging"); });
  zone.addEventListener("dragleave", () => { depth -= 1; if (depth <= 0) zone.classList.remove("is-dragging"); });
  zone.addEventListener("drop", (event) => {
    depth = 0;
    zone.classList.remove("is-dragging");
    submit(event.dataTransfer.files);
  });
  for (const id of ["sort", "class-filter", "confidence-below"]) {
    document.getElementById(id).addEventListener("input", render);
  }
  document.getElementById("csv-links").addEventListener("click", downloadCsv);
  document.getElementById("download-json").addEventListener("click", downloadJson);
  document.getElementById("clear").addEventListener("click", clearResults);
  document.getElementById("key-form").addEventListener("submit", useKey);
  document.getElementById("key-cancel").addEventListener("click", cancelKeyForm);
  document.getElementById("forget-key").addEventListener("click", () => {
    forgetKey();
    input.focus(); // the button has gone
  });
  for (const button of document.querySelectorAll("[data-language]")) {
    button.addEventListener("click", () => chooseLanguage(button.dataset.language));
  }
  keyPrompt.needed = Boolean(storedKey());
  renderForgetKey();
  if (!service.explainEnabled) document.getElementById("explain").checked = false; // a browser may restore it
  const served = embeddedCatalogue();
  const language = wantedLanguage();
  if (served && language === document.documentElement.lang) {
    setLanguage(language, served);
    translatePage(); // only the switch's state: the API wrote the texts
    render();
  } else {
    // Until the wanted catalogue is here, the page keeps the texts it came with.
    const shown = document.documentElement.lang;
    setLanguage(LANGUAGES.includes(shown) ? shown : LANGUAGES[0], served || {});
    render();
    showLanguage(language);
  }
}

init();
