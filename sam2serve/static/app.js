// The playground page: state, DOM and events. The pure parts (API calls, request bodies,
// RLE decoding, snippets) are ES modules under js/, unit-tested with `node --test`.
import { ApiError, imageIdFor, postJson } from "./js/api.js";
import { buildBody as segmentBody, withFormat } from "./js/request.js";
import { decodeRle } from "./js/rle.js";
import { curlSnippet, pythonSnippet } from "./js/snippets.js";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"), serverInfo: $("server-info"), error: $("error"),
    errorText: $("error-text"), errorClose: $("error-close"), dropzone: $("dropzone"),
    stage: $("stage"), image: $("image"), maskCanvas: $("mask-canvas"),
    promptCanvas: $("prompt-canvas"), spinner: $("spinner"), statusText: $("status-text"),
    file: $("file"), imageName: $("image-name"), multimask: $("multimask"),
    undo: $("undo"), clear: $("clear"), newObject: $("new-object"), auth: $("auth"),
    authForm: $("auth-form"), apiKey: $("api-key"), objects: $("objects"), result: $("result"),
    exportPng: $("export-png"), exportJson: $("export-json"), exportRle: $("export-rle"),
    copyCurl: $("copy-curl"), copyPython: $("copy-python"), copyNote: $("copy-note"),
    snippet: $("snippet"), dropOverlay: $("drop-overlay"),
  };

  const KEY_STORAGE = "sam2serve.apiKey";
  const COLORS = ["#1f77ff", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                  "#e377c2", "#17becf", "#bcbd22", "#8c564b", "#7f7f7f"];
  const SERVER_FORMATS = ["image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff"];
  const MAX_UPLOAD_BYTES = 11 * 1024 * 1024;  // base64 grows by 4/3; server default cap 16 MiB
  const DRAG_THRESHOLD_PX = 5;

  const state = {
    info: null,
    authRequired: false,
    apiKey: readStoredKey(),
    fileName: "image",
    dataUrl: null,          // what embed_image is sent (base64 data URL)
    objectUrl: null,        // what the <img> shows
    natW: 0, natH: 0,       // original image size in pixels
    imageId: null, chosenId: null, embeddedModel: null, embedding: false, embedSeq: 0, embedTimer: null,
    objects: [], active: 0, nextNumber: 1,
    history: [],
    seq: 0, controller: null, segmenting: false,
    lastBody: null, lastColors: [], lastResponse: null,
    drag: null,
  };

  // ---------------------------------------------------------------- helpers
  function readStoredKey() {
    try { return localStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
  }
  function storeKey(key) {
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
    } catch { /* storage disabled: the key lives for this page only */ }
  }
  function selectedModel() { return el.model.value || null; }
  function fmtSeconds(s) { return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`; }
  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
  function hasPrompts(o) { return o.points.length > 0 || o.box !== null; }

  function showError(err) {
    let text;
    if (err instanceof ApiError) {
      text = err.status ? `Server answered ${err.status}: ${err.message}` : err.message;
    } else {
      text = `Something went wrong in the page: ${err && err.message ? err.message : err}`;
    }
    el.errorText.textContent = text;
    el.error.hidden = false;
  }
  function clearError() { el.error.hidden = true; el.errorText.textContent = ""; }

  function setStatus(text, busy = false) {
    el.statusText.textContent = text;
    el.spinner.hidden = !busy;
  }

  async function api(path, body, signal) {
    try {
      return await postJson(path, body, { apiKey: state.apiKey, signal });
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        state.authRequired = true;
        renderAuth();
        el.apiKey.focus();
      }
      throw err;
    }
  }

  // ---------------------------------------------------------------- /info
  async function loadInfo(initial = true) {
    try {
      const res = await fetch("/info");
      if (!res.ok) throw new Error(`GET /info answered ${res.status}`);
      const info = await res.json();
      state.info = info;
      const current = el.model.value;  // read after the await: the user may have changed it
      el.model.textContent = "";
      for (const m of info.models || []) {
        if (m.family && m.family !== "sam2") continue;  // SAM 3: the "Find every…" card
        const opt = document.createElement("option");
        opt.value = m.id;
        let label = m.id;
        if (m.loaded) label += " (loaded)";
        else if (!m.present) label += m.size_mb ? ` (not downloaded, ${m.size_mb} MB)` : " (not downloaded)";
        opt.textContent = label;
        el.model.append(opt);
      }
      el.model.value = initial ? info.default_model || "" : current;
      if (!el.model.value && el.model.options.length) el.model.selectedIndex = 0;
      el.serverInfo.textContent = `sam2serve ${info.version || ""} · ${info.device || "?"}`;
      if (info.auth) { state.authRequired = true; renderAuth(); }
    } catch (err) {
      if (!initial) return;  // a refresh of the labels only: keep what we have
      el.serverInfo.textContent = "server info unavailable";
      showError(new ApiError(0, `Could not read /info (${err.message}); using the server's default model.`));
    }
  }

  function renderAuth() {
    el.auth.hidden = !(state.authRequired || state.apiKey);
    if (document.activeElement !== el.apiKey) el.apiKey.value = state.apiKey;
  }

  // ---------------------------------------------------------------- objects & history
  function makeObject() {
    const n = state.nextNumber++;
    return { id: n, name: `Object ${n}`, color: COLORS[(n - 1) % COLORS.length],
             points: [], box: null, mask: null };
  }
  function resetObjects() {
    state.nextNumber = 1;
    state.objects = [makeObject()];
    state.active = 0;
    state.history = [];
  }
  function snapshot() {
    return JSON.stringify({
      objects: state.objects.map(({ mask, ...rest }) => rest),
      active: state.active, nextNumber: state.nextNumber,
    });
  }
  function pushHistory() {
    state.history.push(snapshot());
    if (state.history.length > 200) state.history.shift();
  }
  function activeObject() { return state.objects[state.active]; }

  function changed() {
    renderObjects();
    drawPrompts();
    segment();
  }

  function undo() {
    const prev = state.history.pop();
    if (!prev) { setStatus("Nothing to undo."); return; }
    const masks = new Map(state.objects.map((o) => [o.id, o.mask]));
    const restored = JSON.parse(prev);
    state.objects = restored.objects.map((o) => ({ ...o, mask: masks.get(o.id) || null }));
    state.active = clamp(restored.active, 0, state.objects.length - 1);
    state.nextNumber = restored.nextNumber;
    changed();
  }
  function clearAll() {
    if (state.objects.length === 1 && !hasPrompts(state.objects[0])) return;
    pushHistory();
    state.nextNumber = 1;
    state.objects = [makeObject()];
    state.active = 0;
    changed();
  }
  function newObject() {
    pushHistory();
    state.objects.push(makeObject());
    state.active = state.objects.length - 1;
    changed();
    setStatus(`${activeObject().name}: click or drag on the image to add prompts.`);
  }
  function deleteObject(index) {
    pushHistory();
    state.objects.splice(index, 1);
    if (!state.objects.length) state.objects.push(makeObject());
    state.active = clamp(state.active >= index ? state.active - 1 : state.active, 0,
                         state.objects.length - 1);
    changed();
  }
  function addPoint(x, y, positive) {
    pushHistory();
    activeObject().points.push({ x, y, positive });
    changed();
  }
  function setBox(x1, y1, x2, y2) {
    pushHistory();
    activeObject().box = { x1, y1, x2, y2 };
    changed();
  }

  function renderObjects() {
    el.objects.textContent = "";
    state.objects.forEach((o, i) => {
      const li = document.createElement("li");
      li.className = i === state.active ? "active" : "";
      li.dataset.objectId = String(o.id);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = o.color;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = o.name;
      const meta = document.createElement("span");
      meta.className = "meta";
      const pos = o.points.filter((p) => p.positive).length;
      const neg = o.points.length - pos;
      const parts = [];
      if (pos) parts.push(`${pos}+`);
      if (neg) parts.push(`${neg}\u2212`);
      if (o.box) parts.push("box");
      if (!parts.length) parts.push("no prompts");
      if (o.mask) parts.push(`conf ${o.mask.confidence.toFixed(3)}`);
      meta.textContent = parts.join(" · ");
      const del = document.createElement("button");
      del.type = "button";
      del.title = `Delete ${o.name}`;
      del.setAttribute("aria-label", `Delete ${o.name}`);
      del.textContent = "\u00d7";
      del.addEventListener("click", (ev) => { ev.stopPropagation(); deleteObject(i); });
      li.append(sw, name, meta, del);
      li.addEventListener("click", () => {
        state.active = i;
        renderObjects();
        drawPrompts();
      });
      el.objects.append(li);
    });
    const any = state.objects.some((o) => o.mask);
    el.exportPng.disabled = el.exportJson.disabled = el.exportRle.disabled = !any;
    el.copyCurl.disabled = el.copyPython.disabled = !state.lastBody;
    el.undo.disabled = !state.history.length;
  }

  // ---------------------------------------------------------------- opening an image
  function readAsDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error || new Error("could not read the file"));
      reader.readAsDataURL(blob);
    });
  }

  async function reencode(img, type, quality) {
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    c.getContext("2d").drawImage(img, 0, 0);
    const blob = await new Promise((resolve) => c.toBlob(resolve, type, quality));
    if (!blob) throw new Error("the browser could not re-encode this image");
    return blob;
  }

  async function openFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(new ApiError(0, `"${file.name}" is not an image (${file.type}).`));
      return;
    }
    clearError();
    const url = URL.createObjectURL(file);
    const img = el.image;
    try {
      img.src = url;
      await img.decode();
    } catch {
      URL.revokeObjectURL(url);
      showError(new ApiError(0, `The browser cannot decode "${file.name || "this image"}".`));
      return;
    }
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = url;
    state.natW = img.naturalWidth;
    state.natH = img.naturalHeight;
    state.fileName = (file.name || "pasted-image").replace(/\.[^.]+$/, "") || "image";
    let blob = file;
    let note = "";
    if (!SERVER_FORMATS.includes(file.type)) {
      blob = await reencode(img, "image/png");
      note = " (converted to PNG)";
    }
    if (blob.size > MAX_UPLOAD_BYTES) {
      blob = await reencode(img, "image/jpeg", 0.92);
      note = " (re-encoded as JPEG to fit the upload limit)";
    }
    state.dataUrl = await readAsDataUrl(blob);
    state.chosenId = await imageIdFor(state.dataUrl);
    el.dropzone.hidden = true;
    el.stage.hidden = false;
    el.imageName.textContent = `${file.name || "pasted image"} · ${state.natW}×${state.natH}${note}`;
    resetObjects();
    state.lastBody = null;
    state.lastResponse = null;
    el.result.textContent = "";
    resizeCanvases();
    renderObjects();
    embed();
  }

  // ---------------------------------------------------------------- embed
  function stopEmbedTimer() {
    if (state.embedTimer) clearInterval(state.embedTimer);
    state.embedTimer = null;
  }

  async function embed() {
    if (!state.dataUrl) return;
    const mySeq = ++state.embedSeq;
    if (state.controller) state.controller.abort();
    state.imageId = null;
    state.embedding = true;
    const model = selectedModel();
    const body = { image: { type: "base64", value: state.dataUrl } };
    if (model) body.sam2_version_id = model;
    // an id chosen by the page (when the image loaded): the embed routes like the clicks
    if (state.chosenId) body.image_id = state.chosenId;
    const started = performance.now();
    const label = `Embedding the image${model ? ` with ${model}` : ""}`;
    stopEmbedTimer();
    setStatus(`${label}… 0.0 s`, true);
    state.embedTimer = setInterval(() => {
      setStatus(`${label}… ${((performance.now() - started) / 1000).toFixed(1)} s`, true);
    }, 100);
    try {
      const res = await api("/sam2/embed_image", body);
      if (mySeq !== state.embedSeq) return;
      stopEmbedTimer();
      state.embedding = false;
      state.imageId = res.image_id;
      state.embeddedModel = model;
      clearError();
      const total = (performance.now() - started) / 1000;
      setStatus(`Embedded in ${fmtSeconds(res.time)} on the server (${fmtSeconds(total)} with upload). ` +
                "Click for a positive point, right/shift-click for a negative one, drag for a box.");
      segment();
      if (state.info) loadInfo(false);  // the model list now shows which model is loaded
    } catch (err) {
      if (mySeq !== state.embedSeq) return;
      stopEmbedTimer();
      state.embedding = false;
      setStatus("The image is not embedded yet: fix the problem above, then click the image or pick the model again to retry.");
      showError(err);
    }
  }

  // ---------------------------------------------------------------- segment
  function buildBody(included, format) {
    return segmentBody({
      imageId: state.imageId, model: state.embeddedModel, objects: included,
      multimask: el.multimask.checked, format,
    });
  }

  function segment(retried = false) {
    if (state.controller) state.controller.abort();
    state.controller = null;
    const seq = ++state.seq;
    if (!state.dataUrl) return;
    if (!state.imageId) {
      if (!state.embedding) embed();  // a click after a failed embed retries it
      return;
    }
    const included = state.objects.filter(hasPrompts);
    if (!included.length) {
      for (const o of state.objects) o.mask = null;
      state.lastBody = null;
      state.lastResponse = null;
      state.segmenting = false;
      el.result.textContent = "";
      drawMasks();
      renderObjects();
      return;
    }
    const ids = included.map((o) => o.id);
    const body = buildBody(included, "json");
    const controller = new AbortController();
    state.controller = controller;
    state.segmenting = true;
    el.result.textContent = "Segmenting…";
    const started = performance.now();
    api("/sam2/segment_image", body, controller.signal).then((res) => {
      if (seq !== state.seq) return;  // a newer request owns the screen
      state.controller = null;
      state.segmenting = false;
      const rtt = (performance.now() - started) / 1000;
      const preds = res.predictions || [];
      const byId = new Map(ids.map((id, i) => [id, preds[i]]));
      for (const o of state.objects) {
        const p = byId.get(o.id);
        o.mask = p ? { polygons: p.masks, confidence: p.confidence } : null;
      }
      state.lastBody = body;
      state.lastColors = included.map((o) => o.color);
      state.lastResponse = res;
      state.reembedded404 = false;
      clearError();
      const confs = preds.map((p) => p.confidence.toFixed(3)).join(", ");
      el.result.textContent = `${preds.length} mask${preds.length === 1 ? "" : "s"} · ` +
        `confidence ${confs} · server ${fmtSeconds(res.time)} · round trip ${fmtSeconds(rtt)}`;
      drawMasks();
      renderObjects();
    }).catch((err) => {
      if (err.name === "AbortError" || seq !== state.seq) return;
      state.segmenting = false;
      state.controller = null;
      if (err instanceof ApiError && err.status === 404 && !retried && !state.reembedded404) {
        // the server evicted the embedding: send the image again, then retry this request
        // (once until a segment succeeds: an id gone right after its embed would loop)
        state.reembedded404 = true;
        setStatus("The server no longer holds this image's embedding; embedding it again…", true);
        state.imageId = null;
        embed();
        return;
      }
      el.result.textContent = "The last request failed; see the message above.";
      showError(err);
    });
  }

  // ---------------------------------------------------------------- drawing
  function resizeCanvases() {
    const r = el.image.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr));
    const h = Math.max(1, Math.round(r.height * dpr));
    for (const c of [el.maskCanvas, el.promptCanvas]) {
      if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    }
    drawMasks();
    drawPrompts();
  }

  function polygonPath(polygons, offset = 0) {
    const path = new Path2D();
    for (const poly of polygons) {
      if (!poly.length) continue;
      path.moveTo(poly[0][0] + offset, poly[0][1] + offset);
      for (let i = 1; i < poly.length; i++) path.lineTo(poly[i][0] + offset, poly[i][1] + offset);
      path.closePath();
    }
    return path;
  }

  function hexToRgb(hex) {
    const v = parseInt(hex.slice(1), 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }

  function drawMasks() {
    const c = el.maskCanvas;
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    if (!state.natW) return;
    const sx = c.width / state.natW, sy = c.height / state.natH;
    ctx.setTransform(sx, 0, 0, sy, 0, 0);
    const lineWidth = 2 * (window.devicePixelRatio || 1) / Math.min(sx, sy);
    for (const o of state.objects) {
      if (!o.mask || !o.mask.polygons.length) continue;
      const path = polygonPath(o.mask.polygons, 0.5);
      const [r, g, b] = hexToRgb(o.color);
      ctx.fillStyle = `rgba(${r}, ${g}, ${b}, 0.45)`;
      ctx.fill(path, "evenodd");
      ctx.strokeStyle = o.color;
      ctx.lineWidth = lineWidth;
      ctx.lineJoin = "round";
      ctx.stroke(path);
    }
  }

  function drawPrompts() {
    const c = el.promptCanvas;
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    if (!state.natW) return;
    const dpr = window.devicePixelRatio || 1;
    const sx = c.width / state.natW, sy = c.height / state.natH;
    const toCanvas = (x, y) => [x * sx, y * sy];
    state.objects.forEach((o, i) => {
      const active = i === state.active;
      ctx.globalAlpha = active ? 1 : 0.7;
      if (o.box) {
        const [x1, y1] = toCanvas(Math.min(o.box.x1, o.box.x2), Math.min(o.box.y1, o.box.y2));
        const [x2, y2] = toCanvas(Math.max(o.box.x1, o.box.x2), Math.max(o.box.y1, o.box.y2));
        ctx.setLineDash([6 * dpr, 4 * dpr]);
        ctx.lineWidth = 2 * dpr;
        ctx.strokeStyle = "#fff";
        ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        ctx.lineDashOffset = 5 * dpr;
        ctx.strokeStyle = o.color;
        ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        ctx.setLineDash([]);
        ctx.lineDashOffset = 0;
      }
      for (const p of o.points) {
        const [x, y] = toCanvas(p.x + 0.5, p.y + 0.5);
        const r = (active ? 7 : 5.5) * dpr;
        ctx.beginPath();
        ctx.arc(x, y, r, 0, Math.PI * 2);
        ctx.fillStyle = p.positive ? o.color : "#111";
        ctx.fill();
        ctx.lineWidth = 2 * dpr;
        ctx.strokeStyle = p.positive ? "#fff" : o.color;
        ctx.stroke();
        ctx.beginPath();
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 1.6 * dpr;
        const a = r * 0.5;
        ctx.moveTo(x - a, y);
        ctx.lineTo(x + a, y);
        if (p.positive) { ctx.moveTo(x, y - a); ctx.lineTo(x, y + a); }
        ctx.stroke();
      }
    });
    ctx.globalAlpha = 1;
    if (state.drag && state.drag.isBox) {
      const d = state.drag;
      const [x1, y1] = toCanvas(d.x0, d.y0);
      const [x2, y2] = toCanvas(d.x1, d.y1);
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = activeObject().color;
      ctx.strokeRect(Math.min(x1, x2), Math.min(y1, y2), Math.abs(x2 - x1), Math.abs(y2 - y1));
      ctx.setLineDash([]);
    }
  }

  // ---------------------------------------------------------------- pointer input
  /** Pointer position in ORIGINAL image pixels (continuous), whatever the display scale. */
  function toImage(ev) {
    const r = el.promptCanvas.getBoundingClientRect();
    return {
      x: (ev.clientX - r.left) * state.natW / r.width,
      y: (ev.clientY - r.top) * state.natH / r.height,
    };
  }
  const pixel = (v, size) => clamp(Math.floor(v), 0, size - 1);   // a point: the pixel hit
  const edge = (v, size) => clamp(Math.round(v), 0, size);          // a box corner: an edge

  el.promptCanvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  el.promptCanvas.addEventListener("pointerdown", (ev) => {
    if (!state.natW || (ev.button !== 0 && ev.button !== 2)) return;
    ev.preventDefault();
    el.promptCanvas.setPointerCapture(ev.pointerId);
    const p = toImage(ev);
    state.drag = { id: ev.pointerId, button: ev.button, sx: ev.clientX, sy: ev.clientY,
                   x0: p.x, y0: p.y, x1: p.x, y1: p.y, isBox: false };
  });
  el.promptCanvas.addEventListener("pointermove", (ev) => {
    const d = state.drag;
    if (!d || d.id !== ev.pointerId) return;
    const p = toImage(ev);
    d.x1 = p.x;
    d.y1 = p.y;
    if (!d.isBox && d.button === 0 &&
        Math.hypot(ev.clientX - d.sx, ev.clientY - d.sy) > DRAG_THRESHOLD_PX) d.isBox = true;
    if (d.isBox) drawPrompts();
  });
  el.promptCanvas.addEventListener("pointerup", (ev) => {
    const d = state.drag;
    if (!d || d.id !== ev.pointerId) return;
    state.drag = null;
    const W = state.natW, H = state.natH;
    if (d.isBox) {
      const x1 = edge(d.x0, W), y1 = edge(d.y0, H), x2 = edge(d.x1, W), y2 = edge(d.y1, H);
      if (x1 === x2 || y1 === y2) { drawPrompts(); return; }
      setBox(Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2));
      return;
    }
    const negMode = document.querySelector("input[name=polarity]:checked").value === "neg";
    const negative = d.button === 2 || ev.shiftKey || negMode;
    addPoint(pixel(d.x0, W), pixel(d.y0, H), !negative);
  });
  el.promptCanvas.addEventListener("pointercancel", () => { state.drag = null; drawPrompts(); });

  new ResizeObserver(() => { if (!el.stage.hidden) resizeCanvases(); }).observe(el.image);
  window.addEventListener("resize", () => { if (!el.stage.hidden) resizeCanvases(); });

  // ---------------------------------------------------------------- export
  function download(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  async function requestCurrent(format) {
    if (!state.lastBody) throw new ApiError(0, "Nothing to export yet: click on the image first.");
    return api("/sam2/segment_image", withFormat(state.lastBody, format));
  }

  async function exportPng() {
    try {
      const res = await requestCurrent("rle");
      const W = state.natW, H = state.natH;
      const colors = state.lastColors;
      const single = res.predictions.length === 1;
      const img = new ImageData(W, H);
      const px = img.data;
      for (let i = 3; i < px.length; i += 4) px[i] = 255;  // opaque black background
      res.predictions.forEach((pred, i) => {
        const m = decodeRle(pred.masks);
        const [r, g, b] = single ? [255, 255, 255] : hexToRgb(colors[i] || "#ffffff");
        for (let j = 0; j < m.length; j++) {
          if (m[j]) { px[4 * j] = r; px[4 * j + 1] = g; px[4 * j + 2] = b; }
        }
      });
      const c = document.createElement("canvas");
      c.width = W;
      c.height = H;
      c.getContext("2d").putImageData(img, 0, 0);
      const blob = await new Promise((resolve) => c.toBlob(resolve, "image/png"));
      download(blob, `${state.fileName}-mask.png`);
    } catch (err) { showError(err); }
  }

  async function exportJson(format) {
    try {
      const res = format === "json" && state.lastResponse ? state.lastResponse
        : await requestCurrent(format);
      const blob = new Blob([JSON.stringify(res, null, 2)], { type: "application/json" });
      download(blob, `${state.fileName}-${format === "rle" ? "rle" : "polygons"}.json`);
    } catch (err) { showError(err); }
  }

  async function copyText(text, what) {
    el.snippet.textContent = text;
    el.snippet.hidden = false;
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      const ta = document.createElement("textarea");
      ta.value = text;
      ta.style.position = "fixed";
      ta.style.opacity = "0";
      document.body.append(ta);
      ta.select();
      try { ok = document.execCommand("copy"); } catch { ok = false; }
      ta.remove();
    }
    el.copyNote.textContent = ok ? `${what} copied to the clipboard.`
      : `The browser refused clipboard access: select the ${what} below and copy it.`;
  }

  // ---------------------------------------------------------------- wiring
  el.file.addEventListener("change", () => {
    const f = el.file.files && el.file.files[0];
    el.file.value = "";
    openFile(f).catch(showError);
  });
  el.model.addEventListener("change", () => { if (state.dataUrl) embed(); });
  el.multimask.addEventListener("change", () => segment());
  el.undo.addEventListener("click", undo);
  el.clear.addEventListener("click", clearAll);
  el.newObject.addEventListener("click", newObject);
  el.errorClose.addEventListener("click", clearError);
  el.exportPng.addEventListener("click", exportPng);
  el.exportJson.addEventListener("click", () => exportJson("json"));
  el.exportRle.addEventListener("click", () => exportJson("rle"));
  el.copyCurl.addEventListener("click", () => {
    if (state.lastBody) copyText(curlSnippet(state.lastBody, {
      origin: location.origin, withKey: Boolean(state.apiKey || state.authRequired),
    }), "curl command");
  });
  el.copyPython.addEventListener("click", () => {
    if (state.lastBody) copyText(pythonSnippet(state.lastBody, {
      origin: location.origin, defaultModel: state.info ? state.info.default_model : undefined,
    }), "Python snippet");
  });
  el.authForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.apiKey = el.apiKey.value.trim();
    storeKey(state.apiKey);
    clearError();
    renderAuth();
    if (state.dataUrl) embed();  // each key has its own cache namespace on the server
    else setStatus(state.apiKey ? "API key saved." : "API key removed.");
  });

  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (t instanceof HTMLElement && (t.isContentEditable || t.matches(
      "textarea, select, input:not([type=checkbox]):not([type=radio]):not([type=file])"))) return;
    const key = ev.key.toLowerCase();
    if ((ev.ctrlKey || ev.metaKey) && !ev.shiftKey && !ev.altKey && key === "z") {
      ev.preventDefault();
      undo();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (key === "u") undo();
    else if (key === "c") clearAll();
    else if (key === "n") newObject();
  });

  document.addEventListener("paste", (ev) => {
    const items = ev.clipboardData ? Array.from(ev.clipboardData.items) : [];
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return;
    ev.preventDefault();
    openFile(item.getAsFile()).catch(showError);
  });

  const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types).includes("Files");
  window.addEventListener("dragenter", (ev) => {
    if (hasFiles(ev)) { ev.preventDefault(); el.dropOverlay.hidden = false; }
  });
  window.addEventListener("dragover", (ev) => { if (hasFiles(ev)) ev.preventDefault(); });
  el.dropOverlay.addEventListener("dragleave", () => { el.dropOverlay.hidden = true; });
  window.addEventListener("drop", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    el.dropOverlay.hidden = true;
    openFile(ev.dataTransfer.files[0]).catch(showError);
  });

  window.addEventListener("error", (ev) => showError(ev.error || ev.message));
  window.addEventListener("unhandledrejection", (ev) => showError(ev.reason));

  resetObjects();
  renderAuth();
  renderObjects();
  loadInfo();
  // shared with add-on modules (everything.js)
  window.sam2serve = { state, api, changed, makeObject, pushHistory, setStatus, showError, fmtSeconds };
})();
