/* Contour editor of the viewer page: brush, eraser and closed-stroke fill on the shown slice,
   delete and interpolate on a slice range, undo/redo through revisions, approval, and the
   revision history. Every change is a POST /api/jobs/<id>/edits/ that saves a new revision
   (the model's output stays revision 0); the slice is then fetched again.

   Brush and eraser strokes are rasterised here, discs of the radius in mm along the stroke
   (elliptical in pixels where rows and columns differ in size), and sent as a run-length mask
   of the slice; a fill stroke is sent as its polygon, which the server checks (closed, not
   crossing itself). Coordinates are the slice endpoint's (row, column) pixels. */
"use strict";

(function () {
  const editor = document.getElementById("editor");
  const history = document.getElementById("revision-history");
  const { el } = Delineo;
  let viewer = null;
  let tool = "";
  let stroke = null; // [[row, column], ...] while the mouse is down
  let current = null; // the latest revision: {number, parent, ...}
  const redo = []; // revision numbers undone, newest last

  function status(text) {
    document.getElementById("edit-status").textContent = text || "";
  }

  // --- Revision history ------------------------------------------------------------------
  function describe(r) {
    if (r.number === 0) return "The model's output";
    const e = r.edit || {};
    if (e.mode === "restore") return `Back to revision ${e.revision}`;
    if (e.mode === "direct") return `${e.structure} from the direct segmentation`;
    const where = e.index !== undefined ? `${e.plane} slice ${e.index}` : `${e.plane} slices ${e.first}-${e.last}`;
    return `${e.mode} ${e.structure}, ${where}`;
  }

  function measures(r) {
    return r.edited.map((name) => {
      const m = r.measures[name];
      return `${name}: Dice ${m.dice.toFixed(3)}, added path ${m.added_path_length_mm.toFixed(0)} mm`;
    }).join("; ");
  }

  async function loadHistory() {
    const revisions = await Delineo.api(history.dataset.revisionsUrl);
    current = revisions[revisions.length - 1];
    history.replaceChildren(...revisions.map((r) => el("li", { "data-revision": r.number },
      `${describe(r)}${r.author ? ` by ${r.author}` : ""}, ${new Date(r.created).toLocaleString()}`,
      r.edited.length ? el("div", { class: "hint", text: measures(r) }) : null,
      r.approved ? el("div", {}, el("span", { class: "badge succeeded", text: "Approved" }),
        ` by ${r.approved_by}, ${new Date(r.approved).toLocaleString()}${r.approval_comment ? `: ${r.approval_comment}` : ""}`)
        : null)));
    if (editor) {
      document.getElementById("undo").disabled = current.parent === null;
      document.getElementById("redo").disabled = redo.length === 0;
    }
  }

  // --- Sending edits -------------------------------------------------------------------
  async function send(body, undoing = false) {
    status("Saving…");
    try {
      const revision = await Delineo.api(editor.dataset.editsUrl, { method: "POST", body });
      if (!undoing) redo.length = 0;
      await viewer.reload(revision);
      await loadHistory();
      status(`Saved as revision ${revision.number}.`);
      viewer.showError("");
    } catch (err) {
      status("");
      viewer.showError(err.message);
    }
  }

  const structure = () => document.getElementById("edit-structure").value;
  const slice = () => viewer.state.slice;

  function rangeEdit(mode) {
    const first = Number(document.getElementById("range-first").value);
    const last = Number(document.getElementById("range-last").value);
    send({ structure: structure(), plane: slice().plane, mode, first, last });
  }

  // --- Strokes -------------------------------------------------------------------------
  function pixelOf(event) {
    const layout = viewer.plot._fullLayout;
    const box = viewer.plot.getBoundingClientRect();
    const x = layout.xaxis.p2l(event.clientX - box.left - layout._size.l);
    const y = layout.yaxis.p2l(event.clientY - box.top - layout._size.t);
    const [dy, dx] = slice().pixel_spacing_mm;
    return [y / dy, x / dx];
  }

  // Discs of radius ``mm`` around the stroke's points, every half radius along it, as a mask.
  function brushMask(points, mm) {
    const s = slice();
    const [dy, dx] = s.pixel_spacing_mm;
    const mask = new Uint8Array(s.rows * s.columns);
    const ry = mm / dy;
    const rx = mm / dx;
    const disc = (r0, c0) => {
      for (let r = Math.max(0, Math.ceil(r0 - ry)); r <= Math.min(s.rows - 1, Math.floor(r0 + ry)); r += 1) {
        for (let c = Math.max(0, Math.ceil(c0 - rx)); c <= Math.min(s.columns - 1, Math.floor(c0 + rx)); c += 1) {
          if (((r - r0) / ry) ** 2 + ((c - c0) / rx) ** 2 <= 1) mask[r * s.columns + c] = 1;
        }
      }
    };
    points.forEach(([r, c], i) => {
      const [pr, pc] = i ? points[i - 1] : [r, c];
      const steps = Math.max(1, Math.ceil(Math.hypot((r - pr) * dy, (c - pc) * dx) / (mm / 2)));
      for (let k = 1; k <= steps; k += 1) disc(pr + ((r - pr) * k) / steps, pc + ((c - pc) * k) / steps);
    });
    return mask;
  }

  // Run lengths over the pixels row by row, outside first (the API's ``mask``).
  function runLengths(mask) {
    const runs = [];
    let value = 0;
    let length = 0;
    for (const m of mask) {
      if (m === value) length += 1;
      else { runs.push(length); value = m; length = 1; }
    }
    runs.push(length);
    return runs;
  }

  function finishStroke() {
    const points = stroke;
    stroke = null;
    viewer.redraw();
    if (!points || !points.length) return;
    const base = { structure: structure(), plane: slice().plane, index: slice().index };
    if (tool === "fill") {
      send({ ...base, mode: "add", polygon: points.map(([r, c]) => [+r.toFixed(2), +c.toFixed(2)]) });
      return;
    }
    const radius = Number(document.getElementById("brush-radius").value);
    const mask = brushMask(points, radius);
    if (!mask.some((m) => m)) return;
    send({ ...base, mode: tool, mask: runLengths(mask) });
  }

  function showStroke() {
    const [dy, dx] = slice().pixel_spacing_mm;
    Plotly.react(viewer.plot, [...viewer.plot.data.filter((t) => t.name !== "stroke"), {
      type: "scatter", mode: "lines", name: "stroke", hoverinfo: "skip",
      x: stroke.map(([, c]) => c * dx), y: stroke.map(([r]) => r * dy),
      line: { color: tool === "erase" ? "#fff" : "#ffd54f", width: tool === "fill" ? 2 : 6 },
    }], viewer.plot.layout);
  }

  function setTool(name) {
    tool = name;
    document.querySelectorAll("#editor button.tool").forEach((b) => b.classList.toggle("active", b.dataset.tool === name));
    viewer.state.editing = Boolean(name);
    viewer.redraw();
  }

  function ready() {
    viewer = Delineo.viewer;
    if (history) loadHistory().catch((err) => viewer.showError(err.message));
    if (!editor) return;
    if (slice()) document.getElementById("range-first").value = document.getElementById("range-last").value = slice().index;
    const select = document.getElementById("edit-structure");
    select.replaceChildren(...viewer.state.structures.map((s) => el("option", { value: s.name, text: s.name })));
    document.querySelectorAll("#editor button.tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
    document.getElementById("delete-range").addEventListener("click", () => rangeEdit("delete"));
    document.getElementById("interpolate-range").addEventListener("click", () => rangeEdit("interpolate"));
    const takeDirect = document.getElementById("take-direct");
    if (takeDirect) takeDirect.addEventListener("click", () => send({ mode: "direct", structure: structure() }));
    document.getElementById("undo").addEventListener("click", () => {
      if (current && current.parent !== null) {
        redo.push(current.number);
        send({ mode: "restore", revision: current.parent }, true);
      }
    });
    document.getElementById("redo").addEventListener("click", () => {
      if (redo.length) send({ mode: "restore", revision: redo.pop() }, true);
    });
    document.getElementById("approve").addEventListener("click", async () => {
      try {
        const comment = document.getElementById("approve-comment").value;
        const r = await Delineo.api(editor.dataset.approveUrl, { method: "POST", body: { comment } });
        await loadHistory();
        status(`Revision ${r.number} approved by ${r.approved_by}: its RTSTRUCT says APPROVED.`);
      } catch (err) {
        viewer.showError(err.message);
      }
    });
    const plot = viewer.plot;
    plot.addEventListener("mousedown", (event) => {
      if (!tool || !slice()) return;
      event.preventDefault();
      stroke = [pixelOf(event)];
    });
    plot.addEventListener("mousemove", (event) => {
      if (!stroke) return;
      const point = pixelOf(event);
      const last = stroke[stroke.length - 1];
      if (Math.hypot(point[0] - last[0], point[1] - last[1]) < 1) return; // a point per pixel is enough
      stroke.push(point);
      showStroke();
    });
    window.addEventListener("mouseup", () => { if (stroke) finishStroke(); });
  }

  document.addEventListener("delineo:viewer-ready", ready);
})();
