// sam2serve playground: the Video tab. Self-contained: it adds a "Video" button to the header
// and its own panel, and talks to the video sessions API like any client:
//   POST /sam2/video/sessions (multipart upload) -> session
//   POST .../prompts on a click (shift+click: negative point) -> that frame's masks
//   POST .../propagate (both directions) -> NDJSON, one frame per line, progress bar
// Masks arrive as COCO RLE and are drawn over the <video> for the frame being shown. The
// frame slider scrubs to an exact frame index; Play shows the clip with its overlay (the
// frame index comes from the presented frame's timestamp). Each draw sets the canvas's
// data-frame and fires a `v-drawn` event ({frame}) on it, so tests can follow playback.
// An ES module: the RLE decoder and the error wording are the page's shared ones (js/).
import { errorMessage } from "./js/api.js";
import { decodeRle } from "./js/rle.js";

(() => {
  const BASE = "/sam2/video/sessions";
  const COLOURS = [[255, 64, 64], [64, 160, 255], [64, 220, 96], [255, 200, 0], [200, 80, 255]];
  const state = { session: null, frame: 0, points: {}, masks: new Map(), abort: null };

  const panel = document.createElement("section");
  panel.id = "video-panel";
  panel.hidden = true;
  panel.innerHTML = `
    <div class="card">
      <label class="button primary">Open a clip&hellip;<input id="v-file" type="file" accept="video/*" hidden></label>
      <label>Object <input id="v-object" type="number" min="0" value="1" style="width:4em"></label>
      <button id="v-propagate" type="button" disabled>Propagate</button>
      <button id="v-stop" type="button" disabled>Stop</button>
      <button id="v-reset" type="button" disabled>Reset</button>
      <progress id="v-progress" value="0" max="1"></progress>
      <span id="v-status">Open a clip, pick a frame, click the object (shift+click: not it).</span>
    </div>
    <div class="card">
      <button id="v-play" type="button" disabled>Play</button>
      <input id="v-frame" type="range" min="0" max="0" value="0" step="1" disabled aria-label="Frame">
      <span id="v-frame-label">Frame -</span>
    </div>
    <div id="v-stage" style="position:relative;display:inline-block;max-width:100%">
      <video id="v-video" muted playsinline preload="auto" style="max-width:100%;display:block"></video>
      <canvas id="v-canvas" style="position:absolute;left:0;top:0;width:100%;height:100%;cursor:crosshair"></canvas>
    </div>`;
  document.querySelector("main")?.before(panel);

  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.id = "video-tab";
  toggle.textContent = "Video";
  toggle.addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    const main = document.querySelector("main");
    if (main) main.hidden = !panel.hidden;
    toggle.textContent = panel.hidden ? "Video" : "Images";
  });
  document.querySelector("header")?.append(toggle);

  const $ = (id) => document.getElementById(id);
  const video = $("v-video"), canvas = $("v-canvas"), status = $("v-status");
  const slider = $("v-frame"), play = $("v-play");

  function headers(json) {
    const h = json ? { "Content-Type": "application/json" } : {};
    const key = localStorage.getItem("sam2serve.apiKey");
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async function call(path, init) {
    const response = await fetch(path, init);
    if (!response.ok) {
      const text = await response.text();
      let data = null;
      try { data = JSON.parse(text); } catch { data = null; }
      throw new Error(errorMessage(response.status, text, data, {
        hasKey: Boolean(localStorage.getItem("sam2serve.apiKey")),
        retryAfter: response.headers.get("Retry-After"), statusText: response.statusText,
      }));
    }
    return response;
  }

  function frameIndex() {
    return state.session ? state.frame : 0;
  }

  /** Frame index of a presentation time (s): frame i is shown from i/fps on. */
  function frameAt(seconds) {
    const s = state.session;
    const index = Math.floor(seconds * (s.fps || 25) + 1e-3);
    return Math.max(0, Math.min(s.num_frames - 1, index));
  }

  /** Show frame `index` (the slider and the paused video follow) and its overlay. */
  function showFrame(index, seek) {
    const s = state.session;
    if (!s) return;
    state.frame = Math.max(0, Math.min(s.num_frames - 1, index));
    slider.value = String(state.frame);
    $("v-frame-label").textContent = `Frame ${state.frame} / ${s.num_frames - 1}`;
    // the middle of the frame's display interval: no rounding lands on a neighbour
    if (seek) video.currentTime = (state.frame + 0.5) / (s.fps || 25);
    draw();
  }

  function draw() {
    const s = state.session;
    if (!s) return;
    canvas.width = s.width; canvas.height = s.height;
    const ctx = canvas.getContext("2d");
    const index = frameIndex();
    const frame = state.masks.get(index);
    const img = ctx.createImageData(s.width, s.height);
    for (const obj of frame?.objects || []) {
      const [r, g, b] = COLOURS[obj.object_id % COLOURS.length];
      const m = obj.decoded || (obj.decoded = decodeRle(obj.mask));
      for (let i = 0; i < m.length; i++) if (m[i]) {
        img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 120;
      }
    }
    ctx.putImageData(img, 0, 0);
    canvas.dataset.frame = String(index);
    canvas.dispatchEvent(new CustomEvent("v-drawn", { detail: { frame: index } }));
  }

  function enable(on) {
    for (const id of ["v-propagate", "v-reset", "v-play", "v-frame"]) $(id).disabled = !on;
  }

  $("v-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    video.src = URL.createObjectURL(file);
    status.textContent = "Uploading and decoding the clip...";
    event.target.value = "";  // the same file again is a new upload
    enable(false);
    state.abort?.abort();
    if (state.session) fetch(`${BASE}/${state.session.session_id}`, { method: "DELETE", headers: headers(false) });
    state.session = null; state.masks.clear(); state.points = {}; state.frame = 0;
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    const form = new FormData();
    form.append("video", file);
    try {
      const response = await call(BASE, { method: "POST", body: form, headers: headers(false) });
      state.session = await response.json();
      slider.max = String(state.session.num_frames - 1);
      status.textContent = `${state.session.num_frames} frames, ${state.session.width}x${state.session.height}. Click an object.`;
      enable(true);
      showFrame(0, true);
    } catch (err) { status.textContent = `Could not open the clip: ${err.message}`; }
  });

  canvas.addEventListener("click", async (event) => {
    const s = state.session;
    if (!s) return;
    video.pause();
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * s.width;
    const y = ((event.clientY - rect.top) / rect.height) * s.height;
    const frame = frameIndex(), obj = Number($("v-object").value) || 0;
    const key = `${frame}:${obj}`;
    (state.points[key] ||= []).push({ x, y, positive: !event.shiftKey });
    const body = { frame_index: frame, object_id: obj, points: state.points[key], format: "rle" };
    try {
      const response = await call(`${BASE}/${s.session_id}/prompts`, {
        method: "POST", headers: headers(true), body: JSON.stringify(body),
      });
      state.masks.set(frame, await response.json());
      status.textContent = `Frame ${frame}: object ${obj} has ${state.points[key].length} point(s). Propagate when ready.`;
      draw();
    } catch (err) { status.textContent = `Prompt failed: ${err.message}`; }
  });

  $("v-propagate").addEventListener("click", async () => {
    const s = state.session;
    state.abort = new AbortController();
    $("v-stop").disabled = false;
    const progress = $("v-progress");
    progress.max = s.num_frames; progress.value = 0;
    const seen = new Set();  // both directions meet at the prompted frames: count each once
    try {
      const response = await call(`${BASE}/${s.session_id}/propagate`, {
        method: "POST", headers: headers(true), signal: state.abort.signal,
        body: JSON.stringify({ direction: "both", format: "rle" }),
      });
      const reader = response.body.getReader(), decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl); buffer = buffer.slice(nl + 1);
          if (!line.trim()) continue;
          const frame = JSON.parse(line);
          if (frame.error) throw new Error(frame.error.message);
          state.masks.set(frame.frame_index, frame);
          seen.add(frame.frame_index);
          progress.value = seen.size;
          status.textContent = `Tracked frame ${frame.frame_index} (${seen.size} of ${s.num_frames}).`;
          if (frame.frame_index === state.frame) draw();
        }
      }
      status.textContent = "Done: press play to watch the overlay.";
    } catch (err) {
      status.textContent = err.name === "AbortError" ? "Stopped." : `Propagation failed: ${err.message}`;
    } finally { $("v-stop").disabled = true; draw(); }
  });

  $("v-stop").addEventListener("click", () => state.abort?.abort());
  $("v-reset").addEventListener("click", async () => {
    const s = state.session;
    await call(`${BASE}/${s.session_id}/reset`, { method: "POST", headers: headers(false) });
    state.masks.clear(); state.points = {}; draw();
    status.textContent = "Reset: click an object again.";
  });

  slider.addEventListener("input", () => { video.pause(); showFrame(Number(slider.value), true); });
  play.addEventListener("click", () => {
    if (!state.session) return;
    if (!video.paused) { video.pause(); return; }
    if (state.frame >= state.session.num_frames - 1) showFrame(0, true);  // from the start
    video.play().catch((err) => { status.textContent = `Cannot play the clip here: ${err.message}`; });
  });
  // during playback the overlay follows the frame on screen: its timestamp (mediaTime) when
  // the browser reports presented frames, else the clock on each animation frame
  const follow = (_now, meta) => {
    if (!state.session) return;
    const index = frameAt(meta ? meta.mediaTime : video.currentTime);
    if (index !== state.frame) showFrame(index, false);
    if (video.paused || video.ended) return;
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(follow);
    else requestAnimationFrame(() => follow());
  };
  video.addEventListener("play", () => {
    play.textContent = "Pause";
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(follow);
    else requestAnimationFrame(() => follow());
  });
  video.addEventListener("pause", () => { play.textContent = "Play"; });
  video.addEventListener("ended", () => {  // the last frame stays on screen: so does its overlay
    play.textContent = "Play";
    if (state.session) showFrame(state.session.num_frames - 1, false);
  });
  video.addEventListener("error", () => {
    // the server decoded it (a session exists) but this browser cannot show it
    if (state.session) status.textContent += " (this browser cannot play the clip; prompts still work)";
  });
})();
