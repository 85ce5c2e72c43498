// "Segment everything" for the playground: one POST /sam2/segment_everything on the image
// already embedded (by image_id, so the embedding is reused), or, with "SAM 3" picked, one
// POST /sam3/segment_everything by the same id (the image sent once, after the server's 404,
// as "Find every…" does); the masks drawn each in its own colour on their own canvas, a list
// to pick some, and "Keep" turns each picked mask into an ordinary object (its grid point +
// its box as prompts), editable like any other.
import { postByIdOrImage } from "./js/api.js";
import { hue, imageContext, overlayCanvas, polygonPath, swatch } from "./js/overlay.js";

(() => {
  const app = window.sam2serve;  // the few things app.js shares
  if (!app) return;
  const $ = (id) => document.getElementById(id);
  const button = $("segment-everything");
  const canvas = overlayCanvas("everything-canvas");
  const panel = document.createElement("div");
  panel.id = "everything";
  panel.hidden = true;
  button.closest(".card").appendChild(panel);
  // the generator's main knobs, next to the button (upstream defaults but a 16x16 grid)
  const knobs = document.createElement("div");
  knobs.className = "row";
  const inputs = {};
  for (const [name, label, value, step] of [
    ["points_per_side", "grid", 16, 1],
    ["pred_iou_thresh", "IoU ≥", 0.8, 0.05],
    ["stability_score_thresh", "stability ≥", 0.95, 0.05],
  ]) {
    const input = document.createElement("input");
    input.type = "number";
    input.id = `everything-${name}`;
    input.value = value;
    input.step = step;
    input.min = 0;
    input.style.width = "4.5em";
    const wrap = document.createElement("label");
    wrap.append(`${label} `, input);
    knobs.append(wrap);
    inputs[name] = input;
  }
  // which model family runs it: SAM 2 (the model picked above) or the server's SAM 3
  const family = document.createElement("select");
  family.id = "everything-family";
  family.setAttribute("aria-label", "Segment everything with");
  for (const [value, label] of [["sam2", "SAM 2"], ["sam3", "SAM 3"]]) {
    family.append(new Option(label, value));
  }
  const on = document.createElement("label");
  on.append("on ", family);
  button.after(on);
  button.closest(".row").after(knobs);
  let masks = [];   // [{polygons, color, picked, bbox, point, area, confidence}]
  let busy = false;

  function draw() {
    const ctx = imageContext(canvas, app.state);
    if (!ctx) return;
    for (const m of masks) {
      ctx.globalAlpha = m.picked ? 0.7 : 0.35;
      ctx.fillStyle = m.color;
      ctx.fill(polygonPath(m.polygons, new Path2D()), "evenodd");
    }
    ctx.globalAlpha = 1;
  }

  function render() {
    panel.replaceChildren();
    if (!masks.length) { panel.hidden = true; draw(); return; }
    panel.hidden = false;
    const list = document.createElement("ul");
    list.className = "everything-list";
    masks.forEach((m, i) => {
      const li = document.createElement("li");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = m.picked;
      box.setAttribute("aria-label", `mask ${i + 1}`);
      box.addEventListener("change", () => { m.picked = box.checked; draw(); });
      const label = document.createElement("label");
      label.append(box, swatch(m.color), ` ${m.area} px · IoU ${m.confidence.toFixed(2)}`);
      li.append(label);
      list.append(li);
    });
    const keep = document.createElement("button");
    keep.type = "button";
    keep.id = "everything-keep";
    keep.textContent = "Keep picked as objects";
    keep.addEventListener("click", keepPicked);
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.id = "everything-dismiss";
    dismiss.textContent = "Dismiss";
    dismiss.addEventListener("click", () => { masks = []; render(); });
    const row = document.createElement("div");
    row.className = "row";
    row.append(keep, dismiss);
    panel.append(list, row);
    draw();
  }

  function keepPicked() {
    const picked = masks.filter((m) => m.picked);
    if (!picked.length) return;
    app.pushHistory();
    const objects = app.state.objects;
    // reuse the empty current object first, then add new ones
    let first = true;
    for (const m of picked) {
      let o = app.state.objects[app.state.active];
      if (!first || o.points.length || o.box) {
        o = app.makeObject();
        objects.push(o);
        app.state.active = objects.length - 1;
      }
      first = false;
      const [x, y, w, h] = m.bbox;
      o.points = [{ x: m.point[0], y: m.point[1], positive: true }];
      o.box = { x1: x, y1: y, x2: x + w, y2: y + h };
    }
    masks = [];
    render();
    app.changed();
  }

  // the request for the picked family: SAM 2 by the embedded image's id (and model);
  // SAM 3 by the page's id for the image, sending the image if SAM 3 does not have it yet
  function request(state, body) {
    if (family.value === "sam3") {
      const image = { type: "base64", value: state.dataUrl };
      return postByIdOrImage(app.api, "/sam3/segment_everything",
        { ...body, image_id: state.chosenId }, image);
    }
    const sam2 = { ...body, image_id: state.imageId };
    if (state.embeddedModel) sam2.sam2_version_id = state.embeddedModel;
    return app.api("/sam2/segment_everything", sam2);
  }

  async function run() {
    const { state } = app;
    if (busy) return;
    const sam3 = family.value === "sam3";
    if (sam3 ? !state.dataUrl : !state.imageId) {
      app.showError(new Error(sam3 ? "Open an image first."
        : "Open an image and wait for its embedding first."));
      return;
    }
    busy = true;
    button.disabled = true;
    const started = performance.now();
    app.setStatus(`Segmenting everything${sam3 ? " on SAM 3" : ""}…`, true);
    const body = { format: "json" };
    for (const [name, input] of Object.entries(inputs)) body[name] = Number(input.value);
    try {
      const res = await request(state, body);
      masks = (res.predictions || []).map((p, i) => ({
        polygons: p.masks, color: hue(i), picked: false, bbox: p.bbox, point: p.point,
        area: p.area, confidence: p.confidence,
      }));
      const total = (performance.now() - started) / 1000;
      app.setStatus(`${masks.length} masks in ${app.fmtSeconds(res.time)} on the server ` +
                    `(${app.fmtSeconds(total)} round trip). Pick some and keep them as objects.`);
      render();
    } catch (err) {
      app.setStatus("Segment everything failed; see the message above.");
      app.showError(err);
    } finally {
      busy = false;
      button.disabled = false;
    }
  }

  button.addEventListener("click", run);
  window.addEventListener("resize", draw);
})();
