// "Segment everything" for the playground: one POST /sam2/segment_everything on the image
// already embedded (by image_id, so the embedding is reused), the masks drawn each in its
// own colour on their own canvas, a list to pick some, and "Keep" turns each picked mask
// into an ordinary object (its grid point + its box as prompts), editable like any other.
(() => {
  const app = window.sam2serve;  // the few things app.js shares
  if (!app) return;
  const $ = (id) => document.getElementById(id);
  const button = $("segment-everything");
  const stage = $("stage");
  const canvas = document.createElement("canvas");
  canvas.id = "everything-canvas";
  canvas.style.pointerEvents = "none";
  stage.insertBefore(canvas, $("prompt-canvas"));
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
  button.closest(".row").after(knobs);
  let masks = [];   // [{polygons, color, picked, bbox, point, area, confidence}]
  let busy = false;

  function colour(i) {  // well-separated hues, one per mask
    const hue = Math.round((i * 137.508) % 360);
    return `hsl(${hue} 85% 55%)`;
  }

  function draw() {
    const mask = $("mask-canvas");
    canvas.width = mask.width;
    canvas.height = mask.height;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const { natW, natH } = app.state;
    if (!natW || !masks.length) return;
    ctx.setTransform(canvas.width / natW, 0, 0, canvas.height / natH, 0, 0);
    for (const m of masks) {
      const path = new Path2D();
      for (const poly of m.polygons) {
        if (!poly.length) continue;
        path.moveTo(poly[0][0] + 0.5, poly[0][1] + 0.5);
        for (const [x, y] of poly.slice(1)) path.lineTo(x + 0.5, y + 0.5);
        path.closePath();
      }
      ctx.globalAlpha = m.picked ? 0.7 : 0.35;
      ctx.fillStyle = m.color;
      ctx.fill(path, "evenodd");
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
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = m.color;
      swatch.style.display = "inline-block";
      swatch.style.width = swatch.style.height = "0.9em";
      const label = document.createElement("label");
      label.append(box, swatch, ` ${m.area} px · IoU ${m.confidence.toFixed(2)}`);
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

  async function run() {
    const { state } = app;
    if (busy) return;
    if (!state.imageId) { app.showError(new Error("Open an image and wait for its embedding first.")); return; }
    busy = true;
    button.disabled = true;
    const started = performance.now();
    app.setStatus("Segmenting everything…", true);
    const body = { image_id: state.imageId, format: "json" };
    for (const [name, input] of Object.entries(inputs)) body[name] = Number(input.value);
    if (state.embeddedModel) body.sam2_version_id = state.embeddedModel;
    try {
      const res = await app.api("/sam2/segment_everything", body);
      masks = (res.predictions || []).map((p, i) => ({
        polygons: p.masks, color: colour(i), picked: false, bbox: p.bbox, point: p.point,
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
