// finecut serve: the page. Plain JS and canvas; talks to this server only.
"use strict";

const $ = (id) => document.getElementById(id);
const MARK_SIDE = 1024; // marks are drawn at most at this longer side, sent as PNGs, resized
const LAYER_COLORS = ["#e6194b", "#3cb44b", "#0082c8", "#ffe119", "#911eb4", "#f58230",
  "#46f0f0", "#f032e6", "#808000", "#000080"]; // finecut.viz.LAYER_COLORS

const state = {
  photo: null,        // File
  bitmap: null,       // ImageBitmap of the photo
  width: 0, height: 0,
  maskFile: null,     // an uploaded rough mask (File)
  maskBitmap: null,
  coarseBitmap: null, // the last rough mask from GrabCut
  tool: "brush",
  box: null,          // [x0, y0, x1, y1] in mark-canvas pixels
  hasStrokes: false,
  results: null,      // {mask, alpha, cutout, cutout_soft}: blob URLs
  resultBitmaps: null,
  view: "cutout",
  softZipUrl: null,
  busy: false,
};

// ------------------------------------------------------------------------------ utilities
function stem(name) {
  const base = (name || "image").split(/[\\/]/).pop();
  return (base.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]+/g, "_") || "image");
}

function newJobId() {
  const bytes = new Uint8Array(9);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function showError(which, message) {
  const el = $(which + "-error");
  el.textContent = message || "";
  el.hidden = !message;
}

function setProgress(which, text, fraction) {
  const box = $(which + "-progress");
  box.hidden = text === null;
  if (text === null) return;
  box.querySelector(".progress-text").textContent = text;
  const fill = box.querySelector(".fill");
  if (fraction === null || fraction === undefined) {
    box.classList.add("indeterminate");
    fill.style.width = "";
  } else {
    box.classList.remove("indeterminate");
    fill.style.width = Math.round(100 * Math.max(0, Math.min(1, fraction))) + "%";
  }
}

function canvasBlob(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// Read a zip whose entries are stored (what this server writes): name -> Blob.
async function readZip(blob) {
  const buf = await blob.arrayBuffer();
  const view = new DataView(buf);
  const out = {};
  let p = 0;
  while (p + 30 <= buf.byteLength && view.getUint32(p, true) === 0x04034b50) {
    const flags = view.getUint16(p + 6, true);
    const method = view.getUint16(p + 8, true);
    const size = view.getUint32(p + 18, true);
    const nameLen = view.getUint16(p + 26, true);
    const extraLen = view.getUint16(p + 28, true);
    if (method !== 0 || (flags & 8)) throw new Error("unexpected zip layout from the server");
    const name = new TextDecoder().decode(new Uint8Array(buf, p + 30, nameLen));
    const start = p + 30 + nameLen + extraLen;
    out[name] = new Blob([new Uint8Array(buf, start, size)], { type: "image/png" });
    p = start + size;
  }
  return out;
}

// POST a form with upload progress and server-side progress; resolves to the answer's Blob.
function post(path, form, which, label) {
  return new Promise((resolve, reject) => {
    const job = newJobId();
    const xhr = new XMLHttpRequest();
    let poll = null;
    let uploaded = false;
    const stopPolling = () => { if (poll) { clearInterval(poll); poll = null; } };
    xhr.open("POST", path);
    xhr.responseType = "blob";
    xhr.setRequestHeader("X-Finecut-Job", job);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setProgress(which, `Uploading… ${Math.round(100 * e.loaded / e.total)}%`, e.loaded / e.total);
    };
    xhr.upload.onload = () => {
      uploaded = true;
      setProgress(which, `${label}…`, null);
      const t0 = performance.now();
      poll = setInterval(async () => {
        try {
          const r = await fetch(`/api/progress/${job}`);
          if (!r.ok) return;
          const p = await r.json();
          const secs = ((performance.now() - t0) / 1000).toFixed(0);
          if (p.state === "queued") {
            setProgress(which, `Waiting in the queue (${p.ahead} ahead)… ${secs} s`, null);
          } else if (p.state === "running") {
            setProgress(which, `${label}: ${p.step || "working"}… ${secs} s`, p.fraction);
          }
        } catch (_) { /* the answer will tell */ }
      }, 400);
    };
    xhr.onload = async () => {
      stopPolling();
      if (xhr.status === 200) {
        resolve({ blob: xhr.response, warning: xhr.getResponseHeader("X-Finecut-Warning"),
          seconds: xhr.getResponseHeader("X-Finecut-Seconds") });
        return;
      }
      let message = `the server answered ${xhr.status}`;
      try {
        const body = JSON.parse(await xhr.response.text());
        if (body && body.error) message = body.error;
      } catch (_) { /* not JSON */ }
      const err = new Error(message);
      err.status = xhr.status;
      err.retryAfter = parseInt(xhr.getResponseHeader("Retry-After") || "0", 10);
      reject(err);
    };
    xhr.onerror = () => { stopPolling(); reject(new Error(uploaded ? "the connection to the server was lost" : "the upload failed (is the server running?)")); };
    xhr.send(form);
  });
}

// post() that waits and retries when the queue is full (503 + Retry-After), up to 5 times.
async function postRetrying(path, makeForm, which, label) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await post(path, makeForm(), which, label);
    } catch (err) {
      if (err.status !== 503 || attempt >= 5) throw err;
      const wait = Math.max(1, err.retryAfter || 2);
      for (let s = wait; s > 0; s--) {
        setProgress(which, `The server is busy; retrying in ${s} s…`, null);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
}

// ------------------------------------------------------------------------------ server status
async function refreshStatus() {
  const el = $("server-status");
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    const q = h.queue;
    el.className = "server-status ok";
    el.querySelector(".text").textContent =
      `finecut ${h.version} · refiner ${h.models.refiner} · ${q.running} running, ${q.queued} waiting`;
    $("soft-side").textContent = h.limits.soft_max_side;
  } catch (_) {
    el.className = "server-status down";
    el.querySelector(".text").textContent = "server not reachable";
  }
}

// ------------------------------------------------------------------------------ tabs
document.querySelectorAll(".tab").forEach((tab) => {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => {
      const on = t === tab;
      t.classList.toggle("active", on);
      t.setAttribute("aria-selected", on ? "true" : "false");
      $(t.dataset.panel).hidden = !on;
    });
  });
});

// ------------------------------------------------------------------------------ the photo
const photoCanvas = $("photo-canvas");
const marksCanvas = $("marks-canvas");
const fgMarks = document.createElement("canvas"); // object strokes, opaque on transparent
const bgMarks = document.createElement("canvas"); // background strokes

async function loadPhoto(file) {
  showError("cut", "");
  showError("soft", "");
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    showError("cut", `This browser cannot show ${file.name}; open a PNG, JPEG or WebP (the API takes TIFF too).`);
    return;
  }
  state.photo = file;
  state.bitmap = bitmap;
  state.width = bitmap.width;
  state.height = bitmap.height;
  const scale = Math.min(1, MARK_SIDE / Math.max(bitmap.width, bitmap.height));
  const w = Math.max(1, Math.round(bitmap.width * scale));
  const h = Math.max(1, Math.round(bitmap.height * scale));
  for (const c of [photoCanvas, marksCanvas, fgMarks, bgMarks]) { c.width = w; c.height = h; }
  photoCanvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
  clearMarks();
  clearResult();
  $("drop-msg").hidden = true;
  const kb = file.size / 1024;
  const size = kb > 1024 ? `${(kb / 1024).toFixed(1)} MB` : `${Math.round(kb)} kB`;
  $("photo-info").textContent = `${file.name} · ${bitmap.width}×${bitmap.height} · ${size}`;
  $("soft-photo-info").textContent = `${file.name} · ${bitmap.width}×${bitmap.height}`;
  $("run-btn").disabled = false;
  $("soft-run-btn").disabled = false;
}

$("photo-input").addEventListener("change", (e) => { if (e.target.files[0]) loadPhoto(e.target.files[0]); });
$("soft-photo-input").addEventListener("change", (e) => { if (e.target.files[0]) loadPhoto(e.target.files[0]); });

const drawWrap = $("draw-wrap");
["dragenter", "dragover"].forEach((t) => drawWrap.addEventListener(t, (e) => {
  e.preventDefault();
  drawWrap.classList.add("dragging");
}));
["dragleave", "drop"].forEach((t) => drawWrap.addEventListener(t, () => drawWrap.classList.remove("dragging")));
drawWrap.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = e.dataTransfer.files[0];
  if (file) loadPhoto(file);
});
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => e.preventDefault());

// ------------------------------------------------------------------------------ marking
document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll(".tool").forEach((o) => o.classList.toggle("active", o === b));
  state.tool = b.dataset.tool;
}));
$("brush-size").addEventListener("input", (e) => { $("brush-size-out").textContent = e.target.value; });

function clearMarks() {
  for (const c of [fgMarks, bgMarks, marksCanvas]) c.getContext("2d").clearRect(0, 0, c.width, c.height);
  state.box = null;
  state.hasStrokes = false;
  state.maskFile = null;
  state.maskBitmap = null;
  state.coarseBitmap = null;
  $("mask-input").value = "";
  $("mask-info").textContent = "";
  renderMarks();
}
$("clear-btn").addEventListener("click", clearMarks);

function tinted(source, color) {
  // the opaque pixels of `source` (alpha) painted in `color`
  const c = document.createElement("canvas");
  c.width = marksCanvas.width;
  c.height = marksCanvas.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(source, 0, 0, c.width, c.height);
  ctx.globalCompositeOperation = "source-in";
  ctx.fillStyle = color;
  ctx.fillRect(0, 0, c.width, c.height);
  return c;
}

function greyToAlpha(bitmap) {
  // a grey mask image -> a canvas whose alpha is the grey value
  const c = document.createElement("canvas");
  c.width = marksCanvas.width;
  c.height = marksCanvas.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, c.width, c.height);
  const img = ctx.getImageData(0, 0, c.width, c.height);
  const d = img.data;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i + 3] < 255 ? d[i + 3] : Math.max(d[i], d[i + 1], d[i + 2]);
    d[i] = d[i + 1] = d[i + 2] = 255;
    d[i + 3] = v;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function renderMarks() {
  const ctx = marksCanvas.getContext("2d");
  ctx.clearRect(0, 0, marksCanvas.width, marksCanvas.height);
  const rough = state.maskBitmap || state.coarseBitmap;
  if (rough) {
    ctx.globalAlpha = 0.35;
    ctx.drawImage(tinted(greyToAlpha(rough), "#2f6fed"), 0, 0);
    ctx.globalAlpha = 1;
  }
  ctx.drawImage(tinted(fgMarks, "rgba(40, 200, 90, 0.55)"), 0, 0);
  ctx.drawImage(tinted(bgMarks, "rgba(235, 60, 60, 0.55)"), 0, 0);
  if (state.box) {
    const [x0, y0, x1, y1] = state.box;
    const lw = Math.max(2, marksCanvas.width / 300);
    ctx.lineWidth = lw;
    ctx.setLineDash([4 * lw, 3 * lw]);
    ctx.strokeStyle = "#f5a623";
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    ctx.setLineDash([]);
  }
}

function toMark(e) {
  const r = marksCanvas.getBoundingClientRect();
  return [(e.clientX - r.left) * marksCanvas.width / r.width,
    (e.clientY - r.top) * marksCanvas.height / r.height];
}

let drag = null;
function strokeTo(x, y) {
  const r = marksCanvas.getBoundingClientRect();
  const width = $("brush-size").value * marksCanvas.width / r.width;
  const [paint, erase] = state.tool === "brush" ? [fgMarks, bgMarks] : [bgMarks, fgMarks];
  for (const [canvas, op] of [[paint, "source-over"], [erase, "destination-out"]]) {
    const ctx = canvas.getContext("2d");
    ctx.globalCompositeOperation = op;
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = width;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(drag.x, drag.y);
    ctx.lineTo(x + 0.01, y);
    ctx.stroke();
  }
  drag.x = x;
  drag.y = y;
  state.hasStrokes = true;
}

marksCanvas.addEventListener("pointerdown", (e) => {
  if (!state.bitmap || state.busy) return;
  marksCanvas.setPointerCapture(e.pointerId);
  const [x, y] = toMark(e);
  drag = { x, y };
  if (state.tool === "box") {
    state.box = [x, y, x, y];
  } else {
    strokeTo(x, y);
  }
  state.coarseBitmap = null;
  renderMarks();
});
marksCanvas.addEventListener("pointermove", (e) => {
  if (!drag) return;
  const [x, y] = toMark(e);
  if (state.tool === "box") {
    state.box[2] = x;
    state.box[3] = y;
  } else {
    strokeTo(x, y);
  }
  renderMarks();
});
["pointerup", "pointercancel"].forEach((t) => marksCanvas.addEventListener(t, () => {
  if (drag && state.tool === "box" && state.box) {
    const [x0, y0, x1, y1] = state.box;
    if (Math.abs(x1 - x0) < 3 || Math.abs(y1 - y0) < 3) state.box = null;
    renderMarks();
  }
  drag = null;
}));

$("mask-input").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  try {
    state.maskBitmap = await createImageBitmap(file);
  } catch (_) {
    state.maskBitmap = null; // the server reads more formats than the browser; shown as text
  }
  state.maskFile = file;
  $("mask-info").textContent = `Mask: ${file.name} (used as the rough mask; marks are ignored)`;
  renderMarks();
});

// ------------------------------------------------------------------------------ cut out
function clearResult() {
  if (state.results) Object.values(state.results).forEach((u) => URL.revokeObjectURL(u));
  state.results = null;
  $("result-img").hidden = true;
  $("result-img").removeAttribute("src");
  $("result-img").dataset.ready = "";
  $("result-empty").hidden = false;
  $("result-info").textContent = "";
  for (const id of ["dl-cutout", "dl-mask", "dl-alpha"]) {
    const a = $(id);
    a.classList.add("disabled");
    a.setAttribute("aria-disabled", "true");
    a.removeAttribute("href");
  }
}

function boxInPhotoPixels() {
  const [x0, y0, x1, y1] = state.box;
  const sx = state.width / marksCanvas.width;
  const sy = state.height / marksCanvas.height;
  return [Math.min(x0, x1) * sx, Math.min(y0, y1) * sy, Math.max(x0, x1) * sx, Math.max(y0, y1) * sy]
    .map((v) => v.toFixed(1)).join(",");
}

function hasInk(canvas) {
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 127) return true;
  return false;
}

async function roughMask() {
  if (state.maskFile) return state.maskFile;
  const fg = state.hasStrokes && hasInk(fgMarks);
  const bg = state.hasStrokes && hasInk(bgMarks);
  if (!fg && !state.box) throw new Error("Brush over the object or drag a box around it first.");
  const fgBlob = fg ? await canvasBlob(fgMarks) : null;
  const bgBlob = bg ? await canvasBlob(bgMarks) : null;
  const box = state.box ? boxInPhotoPixels() : null;
  const method = $("use-grabcut").checked ? "grabcut" : "direct";
  const answer = await postRetrying("/api/grabcut", () => {
    const form = new FormData();
    form.append("image", state.photo, state.photo.name);
    if (box) form.append("box", box);
    if (fgBlob) form.append("fg", fgBlob, "fg.png");
    if (bgBlob) form.append("bg", bgBlob, "bg.png");
    form.append("method", method);
    return form;
  }, "cut", method === "grabcut" ? "Finding the object" : "Making the rough mask");
  state.coarseBitmap = await createImageBitmap(answer.blob);
  renderMarks();
  return answer.blob;
}

async function runCut() {
  if (!state.photo || state.busy) return;
  state.busy = true;
  $("run-btn").disabled = true;
  showError("cut", "");
  const t0 = performance.now();
  try {
    const coarse = await roughMask();
    const answer = await postRetrying("/api/refine", () => {
      const form = new FormData();
      form.append("image", state.photo, state.photo.name);
      form.append("mask", coarse, state.maskFile ? state.maskFile.name : "rough.png");
      form.append("snap", $("snap").checked ? "true" : "false");
      form.append("format", "zip");
      return form;
    }, "cut", "Refining");
    const files = await readZip(answer.blob);
    clearResult();
    state.results = {};
    for (const name of ["mask", "alpha", "cutout", "cutout_soft"]) {
      if (!files[name + ".png"]) throw new Error(`the answer has no ${name}.png`);
      state.results[name] = URL.createObjectURL(files[name + ".png"]);
    }
    state.resultBitmaps = {
      mask: await createImageBitmap(files["mask.png"]),
      alpha: await createImageBitmap(files["alpha.png"]),
    };
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    $("result-info").textContent = (answer.warning ? answer.warning + " · " : "") +
      `${state.width}×${state.height} · ${secs} s`;
    setProgress("cut", null);
    renderResult();
  } catch (err) {
    setProgress("cut", null);
    showError("cut", err.message);
  } finally {
    state.busy = false;
    $("run-btn").disabled = !state.photo;
    refreshStatus();
  }
}
$("run-btn").addEventListener("click", runCut);

function overlayUrl(soft) {
  // the photo with the result tinted blue and its outline in yellow, at the marks' size
  const w = marksCanvas.width;
  const h = marksCanvas.height;
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d");
  ctx.drawImage(state.bitmap, 0, 0, w, h);
  const photo = ctx.getImageData(0, 0, w, h);
  ctx.drawImage(soft ? state.resultBitmaps.alpha : state.resultBitmaps.mask, 0, 0, w, h);
  const m = ctx.getImageData(0, 0, w, h).data;
  const d = photo.data;
  const inside = (i) => m[4 * i] > 127;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const a = 0.45 * m[4 * i] / 255;
      d[4 * i] = d[4 * i] * (1 - a) + 40 * a;
      d[4 * i + 1] = d[4 * i + 1] * (1 - a) + 120 * a;
      d[4 * i + 2] = d[4 * i + 2] * (1 - a) + 255 * a;
      const edge = x > 0 && y > 0 && x < w - 1 && y < h - 1 && inside(i) &&
        (!inside(i - 1) || !inside(i + 1) || !inside(i - w) || !inside(i + w));
      if (edge) { d[4 * i] = 255; d[4 * i + 1] = 214; d[4 * i + 2] = 0; }
    }
  }
  ctx.putImageData(photo, 0, 0);
  return c.toDataURL("image/png");
}

function renderResult() {
  if (!state.results) return;
  const soft = $("soft-alpha").checked;
  const img = $("result-img");
  const caption = {
    cutout: `Cut-out (${soft ? "soft alpha" : "binary mask"}) on a checkerboard`,
    overlay: `Result over the photo (${soft ? "soft alpha" : "binary mask"})`,
    alpha: soft ? "Soft alpha" : "Binary mask",
  }[state.view];
  $("result-caption").textContent = caption;
  if (state.view === "cutout") img.src = soft ? state.results.cutout_soft : state.results.cutout;
  else if (state.view === "overlay") img.src = overlayUrl(soft);
  else img.src = soft ? state.results.alpha : state.results.mask;
  img.hidden = false;
  img.dataset.ready = "1";
  $("result-empty").hidden = true;
  const base = stem(state.photo.name);
  const links = {
    "dl-cutout": [soft ? state.results.cutout_soft : state.results.cutout, `${base}_cutout.png`],
    "dl-mask": [state.results.mask, `${base}_mask.png`],
    "dl-alpha": [state.results.alpha, `${base}_alpha.png`],
  };
  for (const [id, [href, name]] of Object.entries(links)) {
    const a = $(id);
    a.href = href;
    a.download = name;
    a.classList.remove("disabled");
    a.setAttribute("aria-disabled", "false");
  }
}

document.querySelectorAll(".view").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll(".view").forEach((o) => o.classList.toggle("active", o === b));
  state.view = b.dataset.view;
  renderResult();
}));
$("soft-alpha").addEventListener("change", renderResult);

// ------------------------------------------------------------------------------ soft layers
$("soft-layers").addEventListener("input", (e) => { $("soft-layers-out").textContent = e.target.value; });

async function runSoft() {
  if (!state.photo || state.busy) return;
  state.busy = true;
  $("soft-run-btn").disabled = true;
  showError("soft", "");
  try {
    const layers = $("soft-layers").value;
    const answer = await postRetrying("/api/soft", () => {
      const form = new FormData();
      form.append("image", state.photo, state.photo.name);
      form.append("layers", layers);
      return form;
    }, "soft", "Splitting into layers");
    const files = await readZip(answer.blob);
    if (state.softZipUrl) URL.revokeObjectURL(state.softZipUrl);
    state.softZipUrl = URL.createObjectURL(answer.blob);
    const dl = $("dl-soft");
    dl.href = state.softZipUrl;
    dl.download = `${stem(state.photo.name)}_layers.zip`;
    dl.classList.remove("disabled");
    dl.setAttribute("aria-disabled", "false");
    const composite = $("soft-composite");
    composite.src = URL.createObjectURL(files["composite.png"]);
    composite.hidden = false;
    $("soft-empty").hidden = true;
    const grid = $("soft-layers-grid");
    grid.textContent = "";
    const names = Object.keys(files).filter((n) => n.startsWith("layer_"))
      .sort((a, b) => parseInt(a.slice(6), 10) - parseInt(b.slice(6), 10));
    names.forEach((name, k) => {
      const url = URL.createObjectURL(files[name]);
      const card = document.createElement("div");
      card.className = "layer-card";
      const wrap = document.createElement("div");
      wrap.className = "canvas-wrap checker";
      const img = document.createElement("img");
      img.src = url;
      img.alt = `soft layer ${k}`;
      wrap.appendChild(img);
      const label = document.createElement("div");
      label.className = "label";
      const title = document.createElement("span");
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.style.background = LAYER_COLORS[k % LAYER_COLORS.length];
      title.append(chip, `Layer ${k}`);
      const link = document.createElement("a");
      link.href = url;
      link.download = `${stem(state.photo.name)}_${name}`;
      link.textContent = "PNG";
      label.append(title, link);
      card.append(wrap, label);
      grid.appendChild(card);
    });
    setProgress("soft", null);
    if (answer.warning) showError("soft", answer.warning);
  } catch (err) {
    setProgress("soft", null);
    showError("soft", err.message);
  } finally {
    state.busy = false;
    $("soft-run-btn").disabled = !state.photo;
    refreshStatus();
  }
}
$("soft-run-btn").addEventListener("click", runSoft);

refreshStatus();
