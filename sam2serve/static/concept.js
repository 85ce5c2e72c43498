// "Find every…" for the playground (SAM 3): a noun phrase (several, comma-separated) and a
// score threshold; one POST /sam3/concept_segment by the image's id (the image itself is sent
// only the first time, when the server answers 404: it is then embedded for SAM 3 under that
// id); every instance found is painted in its phrase's colour and listed with its score.
import { postByIdOrImage } from "./js/api.js";
import { hue, imageContext, overlayCanvas, polygonPath, swatch } from "./js/overlay.js";

(() => {
  const app = window.sam2serve;  // the few things app.js shares
  if (!app) return;
  const $ = (id) => document.getElementById(id);
  const canvas = overlayCanvas("concept-canvas");

  const card = document.createElement("div");
  card.className = "card";
  card.id = "concept-card";
  const title = document.createElement("h2");
  title.textContent = "Find every… (SAM 3)";
  const form = document.createElement("form");
  form.className = "row";
  const text = document.createElement("input");
  text.id = "concept-text";
  text.type = "text";
  text.placeholder = "car, person";
  text.setAttribute("aria-label", "Noun phrases, comma-separated");
  text.style.flex = "1";
  text.style.minWidth = "0";
  const threshold = document.createElement("input");
  threshold.id = "concept-threshold";
  threshold.type = "number";
  threshold.min = 0;
  threshold.max = 1;
  threshold.step = 0.05;
  threshold.value = 0.5;
  threshold.style.width = "4.5em";
  threshold.title = "score threshold";
  threshold.setAttribute("aria-label", "Score threshold");
  const find = document.createElement("button");
  find.id = "concept-find";
  find.type = "submit";
  find.textContent = "Find";
  form.append(text, threshold, find);
  const panel = document.createElement("div");
  panel.id = "concept";
  panel.hidden = true;
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = "Every instance of each phrase, with SAM 3's score (sigmoid × presence).";
  card.append(title, form, hint, panel);
  $("segment-everything").closest(".card").after(card);

  let found = [];  // [{polygons, color, phrase, confidence}]
  let busy = false;

  const colour = (i) => hue(i, 40);  // one hue per phrase

  function draw() {
    const ctx = imageContext(canvas, app.state);
    if (!ctx) return;
    for (const m of found) {
      const path = polygonPath(m.polygons, new Path2D());
      ctx.globalAlpha = 0.45;
      ctx.fillStyle = m.color;
      ctx.fill(path, "evenodd");
      ctx.globalAlpha = 1;
      ctx.strokeStyle = m.color;
      ctx.lineWidth = Math.max(1, app.state.natW / canvas.width);
      ctx.stroke(path);
    }
  }

  function render(results) {
    panel.replaceChildren();
    if (!results.length) { panel.hidden = true; draw(); return; }
    panel.hidden = false;
    const list = document.createElement("ul");
    list.className = "concept-list";
    for (const r of results) {
      const li = document.createElement("li");
      const scores = r.scores.map((s) => s.toFixed(2)).join(", ");
      const shown = r.scores.length;
      const count = r.found > shown ? `${shown} shown of ${r.found} found` : `${shown} found`;
      li.append(swatch(r.color), ` ${r.phrase}: ${count}` + (scores ? ` (${scores})` : ""));
      if (r.note) {
        const note = document.createElement("div");
        note.className = "hint";
        note.textContent = r.note;
        li.append(note);
      }
      list.append(li);
    }
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.id = "concept-dismiss";
    dismiss.textContent = "Dismiss";
    dismiss.addEventListener("click", () => { found = []; render([]); });
    panel.append(list, dismiss);
    draw();
  }

  async function run(event) {
    event.preventDefault();
    const { state } = app;
    if (busy) return;
    const phrases = text.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (!phrases.length) { app.showError(new Error("Type what to find, e.g. car or car, person.")); return; }
    if (!state.dataUrl) { app.showError(new Error("Open an image first.")); return; }
    busy = true;
    find.disabled = true;
    const started = performance.now();
    app.setStatus(`Finding every ${phrases.join(", ")}…`, true);
    const body = {
      image_id: state.chosenId,
      prompts: phrases.map((p) => ({ type: "text", text: p })),
      output_prob_thresh: Number(threshold.value),
      format: "json",
    };
    try {
      const image = { type: "base64", value: state.dataUrl };
      const res = await postByIdOrImage(app.api, "/sam3/concept_segment", body, image);
      const results = (res.prompt_results || []).map((r, i) => ({
        phrase: phrases[i], color: colour(i), note: r.note, found: r.found ?? 0,
        scores: r.predictions.map((p) => p.confidence),
        polygons: r.predictions.map((p) => p.masks),
      }));
      found = results.flatMap((r) => r.polygons.map((polygons, k) => ({
        polygons, color: r.color, phrase: r.phrase, confidence: r.scores[k],
      })));
      const total = (performance.now() - started) / 1000;
      app.setStatus(`${found.length} instances in ${app.fmtSeconds(res.time)} on the server ` +
                    `(${app.fmtSeconds(total)} round trip).`);
      render(results);
    } catch (err) {
      app.setStatus("Find failed; see the message above.");
      app.showError(err);
    } finally {
      busy = false;
      find.disabled = false;
    }
  }

  form.addEventListener("submit", run);
  window.addEventListener("resize", draw);
})();
