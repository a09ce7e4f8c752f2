// The filesvc web page: uploads with progress, recent files, CSV and Parquet exports.
// One ES module (strict by default), no framework, no build step. Every API
// error is JSON {"error": {"code", "message"}}; its message is what we show.

const API = "/api/v1";
const KEY_STORAGE = "filesvc.apiKey";
/** Uploads in flight at once; the rest wait, so page requests are not starved. */
const MAX_PARALLEL_UPLOADS = 3;
const COPIED_LABEL_MS = 2000;
const BLOB_URL_LIFETIME_MS = 60_000;
/** Files from this size up go through tus (resumable); smaller ones are one POST. */
const RESUMABLE_FROM_BYTES = 10 * 1024 * 1024;
/** Bytes per tus PATCH: small enough to lose little on a dropped connection. */
const RESUMABLE_CHUNK_BYTES = 8 * 1024 * 1024;
/** Waits (ms) before each new try of a tus request that failed for want of a network. */
const RESUMABLE_RETRY_DELAYS = [0, 1000, 3000, 5000, 10_000, 20_000, 30_000, 60_000];

const $ = (selector, root = document) => root.querySelector(selector);

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// ---------------------------------------------------------------- formatting

// Binary units, as file managers and `ls -h` count: 1 KiB = 1024 bytes.
const BYTE_UNITS = ["KiB", "MiB", "GiB", "TiB"];
const wholeNumber = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** "1 byte", "300 bytes", "1.2 MiB". */
function formatBytes(bytes) {
  if (bytes < 1024) return `${wholeNumber.format(bytes)} ${bytes === 1 ? "byte" : "bytes"}`;
  let value = bytes / 1024;
  let index = 0;
  while (value >= 1024 && index < BYTE_UNITS.length - 1) {
    value /= 1024;
    index += 1;
  }
  return `${oneDecimal.format(value)} ${BYTE_UNITS[index]}`;
}

function formatDate(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function extensionOf(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot + 1, dot + 5).toUpperCase() : "FILE";
}

function isRasterImage(contentType) {
  return contentType.startsWith("image/") && contentType !== "image/svg+xml";
}

function errorMessage(body, status) {
  return body?.error?.message ?? `The server answered with status ${status}.`;
}

/** Tell screen readers (the visually hidden live region) what just happened. */
function announce(text) {
  const status = $("#status");
  status.textContent = "";
  status.textContent = text;
}

// ------------------------------------------------------------------- API key

const auth = {
  key: sessionStorage.getItem(KEY_STORAGE) ?? "",
  pending: null,
  resolve: null,
};

function authHeaders() {
  return auth.key ? { "X-API-Key": auth.key } : {};
}

function showKeyState() {
  $("#key-state").hidden = !auth.key;
}

function forgetKey() {
  auth.key = "";
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyState();
}

/** Show the key form once, however many requests are waiting for it. */
function askForKey(message) {
  const asking = auth.pending !== null;
  if (!asking) {
    auth.pending = new Promise((resolve) => {
      auth.resolve = resolve;
    });
    $("#key-panel").hidden = false;
    $("#key-input").focus();
  }
  if (asking && !message) return; // keep the refusal already shown
  const error = $("#key-error");
  error.hidden = !message;
  error.textContent = message;
  if (message) announce(message);
}

function useKey(key) {
  auth.key = key;
  sessionStorage.setItem(KEY_STORAGE, key);
  showKeyState();
  $("#key-panel").hidden = true;
  $("#key-input").value = "";
  $("#dropzone").focus(); // the panel that held the focus is gone
  const resolve = auth.resolve;
  auth.pending = null;
  auth.resolve = null;
  resolve?.();
}

/** A 401 came back for a request sent with `usedKey`: wait for a (new) key. */
async function keyRejected(usedKey, message) {
  if (usedKey === auth.key) {
    forgetKey();
    askForKey(usedKey ? message : "");
  }
  // Otherwise the key has changed since: retry with the new one, or wait for it.
  if (auth.pending) await auth.pending;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/** fetch() with the API key, asking for a key (and retrying) on 401. */
async function api(path, init = {}) {
  for (;;) {
    const usedKey = auth.key;
    const response = await fetch(path, {
      ...init,
      headers: { ...init.headers, ...authHeaders() },
    });
    if (response.status !== 401) return response;
    await keyRejected(usedKey, errorMessage(await readJson(response), 401));
  }
}

async function apiJson(path) {
  const response = await api(path);
  const body = await readJson(response);
  if (!response.ok) throw new ApiError(errorMessage(body, response.status), response.status);
  return body;
}

function setUpKeyForm() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    if (key) useKey(key);
  });
  $("#key-forget").addEventListener("click", () => {
    forgetKey();
    announce("The API key is forgotten.");
    refreshAll();
  });
  showKeyState();
}

// ------------------------------------------------------------------ copy URL

function legacyCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch {
    copied = false;
  }
  area.remove();
  return copied;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return legacyCopy(text); // no Clipboard API outside secure contexts
  }
}

function absoluteUrl(url) {
  return new URL(url, location.href).href;
}

/** A stored image's URL resized by a server-side preset ("thumb", "preview"). */
function variantUrl(url, preset) {
  const resized = new URL(url, location.href);
  resized.searchParams.set("variant", preset);
  return resized.href;
}

function copyButton(file, { label = "Copy URL", what = "URL", url = file.url } = {}) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = label;
  button.setAttribute("aria-label", `Copy the ${what} of ${file.filename}`);
  button.dataset.url = absoluteUrl(url);
  button.addEventListener("click", async () => {
    const copied = button.dataset.url;
    if (await copyText(copied)) {
      button.textContent = "Copied";
      announce(`Copied ${copied}`);
      setTimeout(() => {
        button.textContent = label;
      }, COPIED_LABEL_MS);
    } else {
      announce(`Could not copy. The URL is ${copied}`);
    }
  });
  return button;
}

/** "Copy URL" for the original, and "Copy preview" for an image's preview variant. */
function copyButtons(file) {
  const buttons = [copyButton(file)];
  if (isRasterImage(file.content_type)) {
    const preview = variantUrl(file.url, "preview");
    buttons.push(copyButton(file, { label: "Copy preview", what: "preview URL", url: preview }));
  }
  return buttons;
}

/** The thumbnail as a link that opens the file in a new tab. */
function openingThumbnail(file) {
  const link = document.createElement("a");
  link.href = file.url;
  link.target = "_blank";
  link.rel = "noopener";
  link.setAttribute("aria-label", `Open ${file.filename}`);
  link.append(thumbnail(file));
  return link;
}

/**
 * An <img> of a stored file's "thumb" variant (a few KiB, not the original);
 * if the server cannot give one, the original; if that fails too, a type badge.
 */
function thumbnail(file) {
  if (file.visibility !== "public" || !isRasterImage(file.content_type)) {
    return badge(file.filename, file.visibility === "private" ? "Private" : null);
  }
  const image = document.createElement("img");
  image.src = variantUrl(file.url, "thumb");
  image.alt = file.filename;
  image.loading = "lazy";
  image.decoding = "async";
  if (file.width && file.height) {
    image.width = file.width;
    image.height = file.height;
  }
  image.addEventListener("error", function fallBack() {
    if (image.dataset.fallback) {
      image.removeEventListener("error", fallBack);
      image.replaceWith(badge(file.filename));
      return;
    }
    image.dataset.fallback = "original";
    image.src = absoluteUrl(file.url);
  });
  return image;
}

function badge(filename, text = null) {
  const span = document.createElement("span");
  span.className = "file-badge";
  span.textContent = text ?? extensionOf(filename);
  return span;
}

// ------------------------------------------------------------------- uploads

const queue = { waiting: [], active: 0 };

function createUploadTile(file) {
  const tile = $("#upload-template").content.firstElementChild.cloneNode(true);
  $(".file-badge", tile).textContent = extensionOf(file.name);
  $(".tile-name", tile).textContent = file.name;
  $(".tile-name", tile).title = file.name;
  $(".tile-meta", tile).textContent = formatBytes(file.size);
  $("progress", tile).setAttribute("aria-label", `Upload of ${file.name}`);
  $(".cancel", tile).setAttribute("aria-label", `Cancel the upload of ${file.name}`);
  $(".dismiss", tile).setAttribute("aria-label", `Dismiss ${file.name}`);
  $(".dismiss", tile).title = "Dismiss";
  $("#uploads").append(tile);
  return tile;
}

/** Remove a finished tile (refused, failed or cancelled), keeping the focus in the list. */
function dismissTile(tile) {
  const next = tile.nextElementSibling ?? tile.previousElementSibling;
  tile.remove();
  ($(".dismiss:not([hidden])", next ?? document) ?? $("#dropzone")).focus();
}

function setState(upload, state, message) {
  upload.tile.dataset.state = state;
  $(".tile-message", upload.tile).textContent = message;
  // What went wrong can be read, then put away; a stored file's tile stays.
  $(".dismiss", upload.tile).hidden = state !== "error" && state !== "cancelled";
}

function setProgress(upload, fraction) {
  const percent = Math.round(fraction * 100);
  $("progress", upload.tile).value = percent;
  // Every byte sent: the server is still checking and storing the file.
  $(".tile-message", upload.tile).textContent =
    percent < 100 ? `Uploading… ${percent}%` : "Processing…";
}

function cancelUpload(upload) {
  if (upload.finished) return;
  upload.cancelled = true;
  upload.xhr?.abort();
  // Terminate the resumable upload: the server drops its bytes (tus termination).
  upload.tus?.abort(true).catch(() => {});
  finish(upload);
  setState(upload, "cancelled", "Cancelled.");
  announce(`${upload.file.name}: upload cancelled.`);
}

function finish(upload) {
  upload.finished = true;
  $(".cancel", upload.tile)?.remove();
}

/** One XMLHttpRequest (fetch cannot report upload progress); resolves, never rejects. */
function send(upload) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    upload.xhr = xhr;
    xhr.open("POST", `${API}/files`);
    xhr.responseType = "json";
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) setProgress(upload, event.loaded / event.total);
    });
    xhr.addEventListener("load", () => resolve({ status: xhr.status, body: xhr.response }));
    xhr.addEventListener("error", () => resolve({ status: 0, body: null }));
    xhr.addEventListener("abort", () => resolve({ status: -1, body: null }));
    const form = new FormData();
    form.append("file", upload.file, upload.file.name);
    xhr.send(form);
  });
}

// ------------------------------------------------------- resumable uploads

/** tus-js-client, loaded by index.html as a plain script (window.tus). */
function tusClient() {
  return globalThis.tus?.isSupported ? globalThis.tus : null;
}

/** The service's JSON error message in a tus-js-client error, if it holds one. */
function tusErrorMessage(error) {
  const response = error?.originalResponse;
  if (!response) return "The upload failed: the connection to the server was lost.";
  let body = null;
  try {
    body = JSON.parse(response.getBody());
  } catch {
    body = null;
  }
  return errorMessage(body, response.getStatus());
}

/**
 * A big file through tus (resumable): tus-js-client keeps each upload's URL in
 * localStorage under the file's fingerprint, so choosing the same file after a
 * reload continues where it stopped, and it retries on its own after a dropped
 * connection (never after a 4xx refusal but 409 and 423).
 */
function sendResumable(upload, tus) {
  return new Promise((resolve) => {
    const resumable = new tus.Upload(upload.file, {
      endpoint: `${location.origin}${API}/uploads`,
      chunkSize: RESUMABLE_CHUNK_BYTES,
      retryDelays: RESUMABLE_RETRY_DELAYS,
      removeFingerprintOnSuccess: true,
      metadata: { filename: upload.file.name },
      headers: authHeaders(),
      onProgress(sent, total) {
        setProgress(upload, total ? sent / total : 0);
      },
      onShouldRetry(error, retryAttempt, options) {
        const status = error?.originalResponse?.getStatus() ?? 0;
        if (status === 0 && !navigator.onLine) announce(`${upload.file.name}: waiting for the network…`);
        return status === 0 || status === 408 || status === 409 || status === 423 || status >= 500;
      },
      onSuccess() {
        resolve({ status: 201, url: resumable.url });
      },
      onError(error) {
        const status = error?.originalResponse?.getStatus() ?? 0;
        const body = status ? { error: { message: tusErrorMessage(error) } } : null;
        resolve({ status, body });
      },
    });
    upload.tus = resumable;
    resumable.findPreviousUploads().then((previous) => {
      if (upload.cancelled) return;
      if (previous.length > 0) {
        resumable.resumeFromPreviousUpload(previous[0]);
        setState(upload, "uploading", "Resuming…");
      }
      resumable.start();
    });
  });
}

/** The stored file a finished tus upload became (same id as the upload). */
async function fileOfUpload(uploadUrl) {
  const id = new URL(uploadUrl, location.href).pathname.split("/").pop();
  const response = await api(`${API}/files/${encodeURIComponent(id)}`);
  return { status: response.ok ? 201 : response.status, body: await readJson(response) };
}

async function runUpload(upload) {
  for (;;) {
    if (upload.cancelled) return;
    setState(upload, "uploading", "Uploading…");
    const usedKey = auth.key;
    const tus = upload.file.size >= RESUMABLE_FROM_BYTES ? tusClient() : null;
    let result = tus ? await sendResumable(upload, tus) : await send(upload);
    if (result.status === 201 && result.url) result = await fileOfUpload(result.url);
    if (result.status !== 401) {
      settle(upload, result);
      return;
    }
    setState(upload, "waiting", "Waiting for an API key…");
    await keyRejected(usedKey, errorMessage(result.body, 401));
  }
}

function settle(upload, { status, body }) {
  if (upload.cancelled) return;
  finish(upload);
  if (status === 201) {
    showUploaded(upload, body);
  } else {
    const message =
      status === 0
        ? "The upload failed: the connection to the server was lost."
        : errorMessage(body, status);
    setState(upload, "error", message);
    announce(`${upload.file.name}: ${message}`);
  }
}

function showUploaded(upload, file) {
  const { tile } = upload;
  $("progress", tile).value = 100;
  $(".tile-preview", tile).replaceChildren(openingThumbnail(file));
  const size = file.width ? `${file.width}×${file.height} · ` : "";
  $(".tile-meta", tile).textContent = size + formatBytes(file.size);
  $(".tile-actions", tile).replaceChildren(...copyButtons(file));
  tile.dataset.id = file.id;
  setState(upload, "done", "Uploaded.");
  announce(`${file.filename} uploaded.`);
  scheduleRecentRefresh();
}

function pump() {
  while (queue.active < MAX_PARALLEL_UPLOADS && queue.waiting.length > 0) {
    const upload = queue.waiting.shift();
    if (upload.cancelled) continue;
    queue.active += 1;
    runUpload(upload).finally(() => {
      queue.active -= 1;
      pump();
    });
  }
}

function startUploads(files) {
  const list = [...files];
  if (list.length === 0) return;
  for (const file of list) {
    const upload = {
      file,
      tile: createUploadTile(file),
      xhr: null,
      tus: null,
      cancelled: false,
      finished: false,
    };
    setState(upload, "queued", "Waiting…");
    $(".cancel", upload.tile).addEventListener("click", () => cancelUpload(upload));
    $(".dismiss", upload.tile).addEventListener("click", () => dismissTile(upload.tile));
    queue.waiting.push(upload);
  }
  announce(list.length === 1 ? `Uploading ${list[0].name}.` : `Uploading ${list.length} files.`);
  pump();
}

function setUpDropzone() {
  const zone = $("#dropzone");
  const input = $("#file-input");
  zone.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    startUploads(input.files);
    input.value = ""; // choosing the same file again fires "change" again
  });
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    startUploads(event.dataTransfer.files);
  });
  // A file dropped next to the zone must not make the browser leave the page.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => event.preventDefault());
  }
}

// -------------------------------------------------------------- recent files

const recent = { cursors: [null], page: 0, next: null, ticket: 0, timer: 0 };

function recentRow(file) {
  const row = $("#recent-template").content.firstElementChild.cloneNode(true);
  row.dataset.id = file.id;
  $(".file-thumb", row).replaceChildren(thumbnail(file));
  const name = $(".file-name", row);
  name.textContent = file.filename;
  name.href = file.url;
  const parts = [file.content_type, formatBytes(file.size)];
  if (file.width) parts.push(`${file.width}×${file.height}`);
  $(".file-meta", row).textContent = parts.join(" · ");
  const time = $("time", row);
  time.dateTime = file.created_at;
  time.textContent = formatDate(file.created_at);
  if (file.visibility === "public") $(".file-actions", row).append(...copyButtons(file));
  return row;
}

function showRecentMessage(text) {
  const message = $("#recent-message");
  message.hidden = !text;
  message.textContent = text;
}

function updatePager() {
  $("#page-newer").disabled = recent.page === 0;
  $("#page-older").disabled = !recent.next;
  $("#page-number").textContent = `Page ${recent.page + 1}`;
}

async function loadRecent() {
  const ticket = ++recent.ticket;
  const params = new URLSearchParams({ limit: $("#page-size").value });
  const cursor = recent.cursors[recent.page];
  if (cursor) params.set("cursor", cursor);
  try {
    const body = await apiJson(`${API}/files?${params}`);
    if (ticket !== recent.ticket) return; // a newer load has started
    recent.next = body.next_cursor;
    $("#recent").replaceChildren(...body.items.map(recentRow));
    showRecentMessage(body.items.length === 0 ? "Nothing uploaded yet." : "");
  } catch (error) {
    if (ticket !== recent.ticket) return;
    recent.next = null;
    showRecentMessage(error.message);
  }
  updatePager();
}

/** After uploads, refresh the first page once (never yank the reader off a later page). */
function scheduleRecentRefresh() {
  if (recent.page !== 0) return;
  clearTimeout(recent.timer);
  recent.timer = setTimeout(loadRecent, 150);
}

function goToPage(page) {
  if (page > recent.page) recent.cursors[page] = recent.next;
  recent.page = page;
  loadRecent();
}

function resetRecent() {
  recent.cursors = [null];
  recent.page = 0;
  recent.next = null;
  loadRecent();
}

function setUpRecent() {
  $("#page-newer").addEventListener("click", () => goToPage(recent.page - 1));
  $("#page-older").addEventListener("click", () => goToPage(recent.page + 1));
  $("#page-size").addEventListener("change", resetRecent);
}

// ------------------------------------------------------------------- exports

function columnCheckbox(column) {
  const label = document.createElement("label");
  label.className = "column-choice";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.name = "column";
  box.value = column.name;
  box.checked = true;
  const type = document.createElement("span");
  type.className = "column-type";
  type.textContent = column.type;
  label.append(box, ` ${column.name} `, type);
  return label;
}

function datasetForm(dataset) {
  const form = $("#dataset-template").content.firstElementChild.cloneNode(true);
  form.dataset.name = dataset.name;
  form.setAttribute("aria-label", `Export ${dataset.name}`);
  $(".dataset-name", form).textContent = dataset.name;
  $(".dataset-description", form).textContent = dataset.description ?? "";
  $(".column-list", form).append(...dataset.columns.map(columnCheckbox));
  $(".select-all", form).addEventListener("click", () => checkAll(form, true));
  $(".select-none", form).addEventListener("click", () => checkAll(form, false));
  form.addEventListener("change", () => showFormat(form));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    downloadExport(form, dataset.name);
  });
  showFormat(form);
  return form;
}

/** Parquet is typed and binary: the CSV options do not apply to it. */
function showFormat(form) {
  const format = form.elements.format.value;
  for (const option of form.querySelectorAll(".csv-only")) {
    option.hidden = format !== "csv";
  }
  $("button.download", form).textContent = format === "csv" ? "Download CSV" : "Download Parquet";
}

function checkAll(form, checked) {
  for (const box of form.querySelectorAll("input[name=column]")) box.checked = checked;
}

function setDatasetMessage(form, text, isError = false) {
  const message = $(".dataset-message", form);
  message.hidden = !text;
  message.textContent = text;
  message.classList.toggle("error", isError);
  if (text) announce(text);
}

function exportQuery(form, format) {
  const columns = [...form.querySelectorAll("input[name=column]:checked")].map((b) => b.value);
  const params = new URLSearchParams({ columns: columns.join(",") });
  const limit = form.elements.limit.value.trim();
  if (limit) params.set("limit", limit);
  if (format === "csv") {
    const delimiter = form.elements.delimiter.value;
    if (delimiter !== "comma") params.set("delimiter", delimiter);
    if (form.elements.bom.checked) params.set("bom", "true");
  }
  return columns.length > 0 ? params : null;
}

/** The file name from Content-Disposition (RFC 6266), if the server gave one. */
function dispositionFilename(response) {
  const header = response.headers.get("content-disposition") ?? "";
  const extended = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (extended) return decodeURIComponent(extended[1]);
  return /filename="([^"]+)"/i.exec(header)?.[1] ?? null;
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), BLOB_URL_LIFETIME_MS);
}

/** fetch (it can carry the API key, a plain link cannot) → blob → download. */
async function downloadExport(form, name) {
  const format = form.elements.format.value;
  const params = exportQuery(form, format);
  if (!params) {
    setDatasetMessage(form, "Pick at least one column.", true);
    return;
  }
  const button = $("button[type=submit]", form);
  button.disabled = true;
  setDatasetMessage(form, `Preparing ${name}.${format}…`);
  try {
    const response = await api(`${API}/exports/${encodeURIComponent(name)}.${format}?${params}`);
    if (!response.ok) {
      throw new ApiError(errorMessage(await readJson(response), response.status), response.status);
    }
    const blob = await response.blob();
    const filename = dispositionFilename(response) ?? `${name}.${format}`;
    saveBlob(blob, filename);
    setDatasetMessage(form, `Downloaded ${filename} (${formatBytes(blob.size)}).`);
  } catch (error) {
    const text = error instanceof ApiError ? error.message : "The download was interrupted.";
    setDatasetMessage(form, text, true);
  } finally {
    button.disabled = false;
  }
}

async function loadExports() {
  const message = $("#exports-message");
  try {
    const body = await apiJson(`${API}/exports`);
    $("#datasets").replaceChildren(...body.datasets.map(datasetForm));
    message.hidden = body.datasets.length > 0;
    message.textContent = "No datasets are offered.";
  } catch (error) {
    $("#datasets").replaceChildren();
    message.hidden = false;
    message.textContent =
      error.status === 404 ? "This server offers no exports." : error.message;
  }
}

// ---------------------------------------------------------------------- main

function refreshAll() {
  resetRecent();
  loadExports();
}

setUpKeyForm();
setUpDropzone();
setUpRecent();
refreshAll();
