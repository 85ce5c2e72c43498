// First use of the fast runtime: while the server prepares it (GET /readyz answers 503 with
// status "preparing"), say so under the image instead of leaving a bare spinner; requests
// keep working meanwhile (the server answers them on its exact path). While the default
// model's weights are missing (status "weights_missing" / "model_unavailable") show the
// server's message (which file to place where) until they are placed. Self-contained: it
// only reads /readyz and adds one element after #status.
(() => {
  "use strict";
  const NOTE = "first use: preparing the fast runtime (one time)";
  let note = null;

  const WAITING = ["preparing", "loading", "weights_missing", "model_unavailable"];
  const MISSING = ["weights_missing", "model_unavailable"];

  function show(text, detail) {
    if (!note) {
      note = document.createElement("div");
      note.id = "first-use";
      note.setAttribute("role", "status");
      note.className = "hint";
      const status = document.getElementById("status");
      (status ? status.parentNode : document.body).insertBefore(
        note, status ? status.nextSibling : null);
    }
    note.textContent = text;
    note.title = detail || text;
    note.hidden = false;
  }

  async function poll() {
    let again = false;
    try {
      const res = await fetch("/readyz", { cache: "no-store" });
      const body = await res.json().catch(() => ({}));
      again = res.status === 503 && WAITING.includes(body.status);
      if (body.status === "preparing") show(NOTE, body.message);
      else if (MISSING.includes(body.status) && body.message) show(body.message);
      else if (note) note.hidden = true;
    } catch (_) {
      again = false;  // server unreachable: app.js reports errors, nothing to add here
    }
    if (again) setTimeout(poll, 2000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", poll);
  else poll();
})();
