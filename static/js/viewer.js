/* Slice viewer: CT slices with structure overlays, drawn with plotly.js (served locally).
   Slices come from GET /api/jobs/<id>/slice/?plane=&index= already in display
   orientation (radiological; see webapp/delineation/viewer.py), with pixel spacing
   (row, column) in mm: heatmaps are drawn in mm so the aspect ratio is physical. */
"use strict";

(function () {
  const root = document.getElementById("viewer");
  const plot = document.getElementById("plot");
  const sliceSlider = document.getElementById("slice-slider");
  const sliceLabel = document.getElementById("slice-label");
  const windowSlider = document.getElementById("window-slider");
  const levelSlider = document.getElementById("level-slider");
  const errorBox = document.getElementById("viewer-error");
  const { el } = Delineo;
  const AXIS = { sagittal: 0, coronal: 1, axial: 2 };

  const state = {
    plane: "axial",
    index: null,
    count: 0,
    window: 400,
    level: 40,
    outlines: true,
    structures: [], // {label, name, color, volume_cm3, visible, opacity}
    slice: null,
    job: null,
    showDirect: true, // a propagation's direct segmentation, drawn dashed
    editing: false, // a brush, eraser or fill tool is on (editor.js): dragging draws, not zooms
  };
  const cache = new Map();
  const CACHE_SIZE = 256;
  let sequence = 0;

  function showError(message) {
    errorBox.textContent = message || "";
    errorBox.classList.toggle("hidden", !message);
  }

  // --- Slices --------------------------------------------------------------------------
  function bytesOf(b64) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i += 1) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  // Per label value present: {fill (1 inside, null outside), line (1 inside, 0 outside)}.
  function masksOf(labels, present, rows, columns) {
    const masks = {};
    for (const value of present) {
      const fill = [];
      const line = [];
      for (let r = 0; r < rows; r += 1) {
        const f = new Array(columns);
        const l = new Array(columns);
        for (let c = 0; c < columns; c += 1) {
          const inside = labels[r * columns + c] === value;
          f[c] = inside ? 1 : null;
          l[c] = inside ? 1 : 0;
        }
        fill.push(f);
        line.push(l);
      }
      masks[value] = { fill, line };
    }
    return masks;
  }

  function decode(s) {
    const n = s.rows * s.columns;
    const imageBytes = bytesOf(s.image.data);
    const image = new Int16Array(imageBytes.buffer, 0, n); // little-endian, as the API sends
    const imageRows = [];
    for (let r = 0; r < s.rows; r += 1) imageRows.push(Array.from(image.subarray(r * s.columns, (r + 1) * s.columns)));
    const masks = masksOf(bytesOf(s.labels.data), s.labels_present, s.rows, s.columns);
    const directMasks = s.direct_labels
      ? masksOf(bytesOf(s.direct_labels.data), s.direct_present, s.rows, s.columns) : {};
    return { ...s, imageRows, masks, directMasks };
  }

  async function loadSlice(plane, index) {
    const key = `${plane}:${index}`;
    if (index !== null && cache.has(key)) return cache.get(key);
    const params = new URLSearchParams({ plane });
    if (index !== null) params.set("index", index);
    const decoded = decode(await Delineo.api(`${root.dataset.sliceUrl}?${params}`));
    cache.set(`${plane}:${decoded.index}`, decoded);
    while (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
    return decoded;
  }

  async function show(plane, index) {
    const mine = ++sequence;
    try {
      const s = await loadSlice(plane, index);
      if (mine !== sequence) return; // a newer request won
      state.plane = plane;
      state.index = s.index;
      state.count = s.count;
      state.slice = s;
      sliceSlider.max = s.count - 1;
      sliceSlider.value = s.index;
      sliceLabel.textContent = `${s.index + 1} / ${s.count} (${s.position_mm.toFixed(1)} mm)`;
      showError("");
      await draw();
      for (const near of [s.index + 1, s.index - 1]) {
        if (near >= 0 && near < s.count && !cache.has(`${plane}:${near}`)) loadSlice(plane, near).catch(() => {});
      }
    } catch (err) {
      if (mine === sequence) showError(err.message);
    }
  }

  function step(delta) {
    if (state.index === null) return;
    const next = Math.max(0, Math.min(state.count - 1, state.index + delta));
    if (next !== state.index) show(state.plane, next);
  }

  // --- Drawing -------------------------------------------------------------------------
  const rgb = (c, a = 1) => `rgba(${c[0]},${c[1]},${c[2]},${a})`;

  function traces(s) {
    const [dy, dx] = s.pixel_spacing_mm;
    const grid = { x0: 0, dx, y0: 0, dy };
    const out = [{
      type: "heatmap", name: "CT", z: s.imageRows, ...grid,
      colorscale: [[0, "#000"], [1, "#fff"]], zmin: state.level - state.window / 2,
      zmax: state.level + state.window / 2, showscale: false, zsmooth: false,
      hovertemplate: "%{z} HU<extra></extra>",
    }];
    for (const st of state.structures) {
      const mask = s.masks[st.label];
      if (!mask || !st.visible) continue;
      out.push({
        type: "heatmap", name: st.name, meta: { label: st.label, kind: "fill" }, z: mask.fill, ...grid,
        colorscale: [[0, rgb(st.color)], [1, rgb(st.color)]], zmin: 0, zmax: 1, showscale: false,
        opacity: st.opacity, zsmooth: false, hovertemplate: `${st.name}<extra></extra>`,
      });
      if (state.outlines) {
        out.push({
          type: "contour", name: `${st.name} outline`, meta: { label: st.label, kind: "outline" }, z: mask.line,
          ...grid, autocontour: false, contours: { start: 0.5, end: 0.5, size: 1, coloring: "none" },
          line: { color: rgb(st.color), width: 1.5, smoothing: 0 }, showscale: false, hoverinfo: "skip",
        });
      }
    }
    // A propagation's direct segmentation of the daily scan: dashed outlines over the propagated fills.
    for (const st of state.structures) {
      const direct = s.directMasks[st.label];
      if (!direct || !st.visible || !state.showDirect) continue;
      out.push({
        type: "contour", name: `${st.name} direct`, meta: { label: st.label, kind: "direct" }, z: direct.line,
        ...grid, autocontour: false, contours: { start: 0.5, end: 0.5, size: 1, coloring: "none" },
        line: { color: rgb(st.color), width: 2, dash: "dash", smoothing: 0 }, showscale: false, hoverinfo: "skip",
      });
    }
    return out;
  }

  function layout(s) {
    const [dy, dx] = s.pixel_spacing_mm;
    const o = s.orientation;
    const letter = (text, x, y, xanchor, yanchor) => ({
      text, x, y, xref: "paper", yref: "paper", xanchor, yanchor, showarrow: false,
      font: { color: "#ffd54f", size: 14 },
    });
    return {
      margin: { l: 0, r: 0, t: 0, b: 0 },
      paper_bgcolor: "#000",
      plot_bgcolor: "#000",
      showlegend: false,
      dragmode: state.editing ? false : "zoom",
      uirevision: `${s.plane}:${s.rows}x${s.columns}`,
      xaxis: { visible: false, range: [-dx / 2, (s.columns - 0.5) * dx], constrain: "domain" },
      yaxis: {
        visible: false, range: [(s.rows - 0.5) * dy, -dy / 2], scaleanchor: "x", scaleratio: 1, constrain: "domain",
      },
      annotations: [
        letter(o.top, 0.5, 1, "center", "top"), letter(o.bottom, 0.5, 0, "center", "bottom"),
        letter(o.left, 0, 0.5, "left", "middle"), letter(o.right, 1, 0.5, "right", "middle"),
      ],
    };
  }

  async function draw() {
    const s = state.slice;
    if (!s) return;
    await Plotly.react(plot, traces(s), layout(s), { scrollZoom: false, displaylogo: false, responsive: true });
    const drawn = state.structures.filter((st) => st.visible && s.masks[st.label]).map((st) => st.name);
    plot.dataset.structures = drawn.join(",");
    plot.dataset.direct = state.showDirect
      ? state.structures.filter((st) => st.visible && s.directMasks[st.label]).map((st) => st.name).join(",") : "";
    plot.dataset.plane = s.plane;
    plot.dataset.index = String(s.index);
  }

  function applyWindow() {
    state.window = Number(windowSlider.value);
    state.level = Number(levelSlider.value);
    document.getElementById("window-label").textContent = state.window;
    document.getElementById("level-label").textContent = state.level;
    if (state.slice) {
      Plotly.restyle(plot, { zmin: [state.level - state.window / 2], zmax: [state.level + state.window / 2] }, [0]);
    }
  }

  // --- Side panel ----------------------------------------------------------------------
  function structureTable() {
    const body = document.querySelector("#structures-table tbody");
    body.replaceChildren();
    // The domain check's implausible structures (engine.infer.domain): marked, with why.
    const implausible = (state.job && state.job.outside_domain && state.job.domain.structures) || {};
    for (const st of state.structures) {
      const found = st.volume_cm3 > 0;
      const why = implausible[st.name];
      const toggle = el("input", { type: "checkbox", checked: st.visible, "data-label": st.label, "aria-label": `Show ${st.name}` });
      toggle.addEventListener("change", () => { st.visible = toggle.checked; draw(); });
      const opacity = el("input", { type: "range", min: 0, max: 100, value: Math.round(st.opacity * 100), "aria-label": `${st.name} opacity` });
      opacity.addEventListener("input", () => { st.opacity = Number(opacity.value) / 100; draw(); });
      const goTo = el("button", { type: "button", class: "small", disabled: !found, title: "Go to the slice through its centre", text: "Go to" });
      goTo.addEventListener("click", () => {
        const centre = state.slice && state.slice.centres[String(st.label)];
        if (centre) show(state.plane, centre[AXIS[state.plane]]);
      });
      const rowClass = [found ? null : "absent", why ? "implausible" : null].filter(Boolean).join(" ") || null;
      body.append(el("tr", { "data-structure": st.name, class: rowClass, title: why ? `Implausible: ${why}` : null },
        el("td", {}, toggle),
        el("td", {}, el("span", { class: "swatch", style: `background:${rgb(st.color)}` }), ` ${st.name}`,
          why ? el("span", { class: "implausible-mark", text: " ⚠ implausible" }) : null),
        el("td", { class: "num", text: found ? st.volume_cm3.toFixed(1) : "not found" }),
        el("td", {}, opacity),
        el("td", {}, goTo)));
    }
  }

  // The RTSTRUCT was read back and compared with the label map before it was offered.
  function roundtripNote(check) {
    if (!check) return null;
    const worst = Object.entries(check.dice).sort((a, b) => a[1] - b[1])[0];
    const text = ` Round-trip check passed: the contours read back give Dice ≥ ${check.min_dice.toFixed(3)}` +
      ` per structure against the label map` + (check.threshold ? ` (required ${check.threshold})` : "") +
      (worst && worst[1] < 1 ? `; lowest: ${worst[0]}` : "");
    return el("div", { class: "hint", id: "rtstruct-check", text });
  }

  // Outside the model's domain the RTSTRUCT and SEG download only once the warning's box is
  // ticked; the API records the acknowledgement in the access log.
  function acknowledged(job, link) {
    if (!job.outside_domain) return link;
    link.href += "?acknowledge=outside-domain";
    link.addEventListener("click", (event) => {
      if (document.getElementById("acknowledge-domain").checked) return;
      event.preventDefault();
      alert("Tick \"I have read this warning\" above the viewer first.");
    });
    return link;
  }

  function sidePanel(job) {
    const links = document.getElementById("downloads");
    links.replaceChildren();
    const d = job.downloads || {};
    if (d.labels) links.append(el("li", {}, el("a", { href: d.labels, id: "download-labels", text: "Label map (NIfTI)" })));
    if (d.structures_zip) links.append(el("li", {}, el("a", { href: d.structures_zip, id: "download-structures", text: "One mask per structure (zip of NIfTI)" })));
    const rtstructText = job.kind === "propagate" ? "RTSTRUCT of the propagated contours only (DICOM)" : "RTSTRUCT (DICOM)";
    const status = el("span", { class: "hint", id: "export-status", role: "status" });
    const exported = (link) => Delineo.exportLink(link, status);  // a revision's is written by the worker
    if (d.rtstruct) links.append(el("li", {}, exported(acknowledged(job, el("a", { href: d.rtstruct, id: "download-rtstruct", text: rtstructText }))),
      roundtripNote(job.rtstruct_check)));
    if (d.seg) links.append(el("li", {}, exported(acknowledged(job, el("a", { href: d.seg, id: "download-seg", text: "Segmentation (DICOM SEG)" })))));
    if (d.ct_dicom) links.append(el("li", {}, el("a", { href: d.ct_dicom, id: "download-ct-dicom", text: "CT as a DICOM series (zip), referenced by the RTSTRUCT and SEG" })));
    if (d.audit) links.append(el("li", {}, el("a", { href: d.audit, id: "download-audit", text: "Contour audit (JSON)" })));
    if (d.final_rtstruct) links.append(el("li", {}, exported(el("a", { href: d.final_rtstruct, id: "download-final", text: "RTSTRUCT for the daily scan, with the contours kept (DICOM)" }))));
    links.append(el("li", {}, status));
    if (d.propagation) links.append(el("li", {}, el("a", { href: d.propagation, id: "download-propagation", text: "Propagation report (JSON)" })));
    if (d.ddf) links.append(el("li", {}, el("a", { href: d.ddf, id: "download-ddf", text: "Displacement field, mm (NIfTI)" })));
    if (job.kind !== "audit") for (const note of job.notes || []) links.append(el("li", { class: "hint", text: note }));
    const info = document.getElementById("job-info");
    info.replaceChildren();
    const add = (k, v) => info.append(el("dt", { text: k }), el("dd", { text: v }));
    add("Model", job.model);
    add("Weights", job.weights_sha256 ? `sha256 ${job.weights_sha256.slice(0, 12)}…` : "–");
    add("Input", job.input_kind || "–");
    for (const [stage, seconds] of Object.entries(job.timings || {})) add(`Time: ${stage}`, Delineo.formatSeconds(seconds));
  }

  // --- Contour audit (audit jobs): one row per audited ROI, worst Dice first -------------
  const fixed = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  // The audit's check of a contour: its combined score (quality score and agreement with
  // the model, in standard deviations of sound contours) and whether it flags by it; the
  // critic's own score beside it.
  function checkText(r) {
    const quality = `quality ${fixed(r.qam_score, 2)}`;
    if (r.check_score === null || r.check_score === undefined) return `– (${quality}; not calibrated)`;
    const acts = r.check_threshold === null || r.check_threshold === undefined
      ? "shown only" : `flags below ${fixed(r.check_threshold, 2)}`;
    return `${fixed(r.check_score, 2)} (${acts}; ${quality})`;
  }

  function auditTable(audit) {
    const body = document.querySelector("#audit-table tbody");
    body.replaceChildren();
    if (!audit) {
      body.append(el("tr", {}, el("td", { colspan: 9, text: "The audit report of this job could not be read." })));
      return;
    }
    for (const r of audit.structures) {
      const model = state.structures.find((st) => st.name === r.structure);
      const goTo = el("button", {
        type: "button", class: "small", disabled: !(model && model.volume_cm3 > 0),
        title: "Go to the slice through the centre of the model's delineation", text: "Go to",
      });
      goTo.addEventListener("click", () => {
        const centre = model && state.slice && state.slice.centres[String(model.label)];
        if (centre) show(state.plane, centre[AXIS[state.plane]]);
      });
      const findings = r.flagged
        ? el("td", {}, el("span", { class: "badge failed", text: "Flagged" }), el("ul", {}, ...r.reasons.map((t) => el("li", { text: t }))))
        : el("td", { class: "hint", text: "No finding" });
      body.append(el("tr", { "data-roi": r.roi_name, class: r.flagged ? "flagged" : null },
        el("td", { text: r.roi_name }),
        el("td", {}, model ? el("span", { class: "swatch", style: `background:${rgb(model.color)}` }) : null, ` ${r.structure}`),
        el("td", { class: "num", text: checkText(r) }),
        el("td", { class: "num", text: fixed(r.dice, 2) }),
        el("td", { class: "num", text: fixed(r.msd_mm, 1) }),
        el("td", { class: "num", text: fixed(r.hd95_mm, 1) }),
        el("td", { class: "num", text: `${fixed(r.contour_volume_cm3, 1)} / ${r.model_volume_cm3 > 0 ? fixed(r.model_volume_cm3, 1) : "not found"}` }),
        findings,
        el("td", {}, goTo)));
    }
    if (!audit.structures.length) body.append(el("tr", {}, el("td", { colspan: 9, text: "No contour was audited." })));
    const notes = document.getElementById("audit-notes");
    notes.replaceChildren(...(audit.notes || []).map((n) => el("li", { text: n })));
  }

  // --- Contour propagation (propagate jobs): propagated vs direct, and the physician's choice ---
  const propagationSection = document.getElementById("propagation");

  function choiceCell(r) {
    const name = `keep-${r.label}`;
    const radio = (value, text, disabled) => el("label", {},
      el("input", { type: "radio", name, value, checked: r.kept === value, disabled, "data-structure": r.name }), ` ${text}`);
    return el("td", {}, radio("propagated", "propagated", false),
      radio("direct", "direct", !r.direct || undefined));
  }

  function propagationTable(report) {
    const body = document.querySelector("#propagation-table tbody");
    body.replaceChildren();
    if (!report) {
      body.append(el("tr", {}, el("td", { colspan: 9, text: "The propagation report of this job could not be read." })));
      return;
    }
    document.getElementById("folding-total").textContent = fixed(report.folding_percent, 2);
    for (const r of report.structures) {
      const st = state.structures.find((x) => x.name === r.name);
      const goTo = el("button", { type: "button", class: "small", disabled: !(st && st.volume_cm3 > 0), text: "Go to",
        title: "Go to the slice through the centre of the propagated contours" });
      goTo.addEventListener("click", () => {
        const centre = st && state.slice && state.slice.centres[String(st.label)];
        if (centre) show(state.plane, centre[AXIS[state.plane]]);
      });
      const warning = r.warning
        ? el("td", {}, el("span", { class: "badge queued", text: "Check" }), ` ${r.warning}`)
        : el("td", { class: "hint", text: r.direct ? "No finding" : "No direct segmentation to compare with" });
      body.append(el("tr", { "data-structure": r.name, class: r.warning ? "warned" : null },
        el("td", {}, st ? el("span", { class: "swatch", style: `background:${rgb(st.color)}` }) : null, ` ${r.name}`),
        el("td", { class: "num", text: fixed(r.volume_ml, 1) }),
        el("td", { class: "num", text: fixed(r.dice_vs_direct, 2) }),
        el("td", { class: "num", text: fixed(r.msd_mm_vs_direct, 1) }),
        el("td", { class: "num", text: fixed(r.hd95_mm_vs_direct, 1) }),
        el("td", { class: "num", text: fixed(r.folding_percent_inside, 1) }),
        warning, choiceCell(r), el("td", {}, goTo)));
    }
    if (!report.structures.length) body.append(el("tr", {}, el("td", { colspan: 9, text: "No structure was propagated." })));
    document.getElementById("propagation-notes").replaceChildren(...(report.notes || []).map((n) => el("li", { text: n })));
  }

  async function saveChoices() {
    const status = document.getElementById("choices-status");
    const choices = {};
    document.querySelectorAll("#propagation-table input[type=radio]:checked").forEach((input) => {
      choices[input.dataset.structure] = input.value;
    });
    status.textContent = "Saving the choices…";
    try {
      const job = await Delineo.api(propagationSection.dataset.choicesUrl, { method: "POST", body: { choices } });
      state.job = job;
      propagationTable(job.propagation);
      status.textContent = "Saved. The worker now writes the RTSTRUCT for the daily scan with the contours kept; "
        + "the download below waits for it.";
    } catch (err) {
      status.textContent = "";
      showError(err.message);
    }
  }

  if (propagationSection) {
    document.getElementById("save-choices").addEventListener("click", saveChoices);
    Delineo.exportLink(document.getElementById("download-final-rtstruct"), document.getElementById("choices-status"));
    document.getElementById("direct-toggle").addEventListener("change", (event) => {
      state.showDirect = event.target.checked;
      draw();
    });
  }

  // --- Events --------------------------------------------------------------------------
  document.querySelectorAll("button.plane").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll("button.plane").forEach((x) => x.classList.toggle("active", x === b));
    show(b.dataset.plane, null);
  }));
  document.querySelectorAll("button.preset").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll("button.preset").forEach((x) => x.classList.toggle("active", x === b));
    windowSlider.value = b.dataset.w;
    levelSlider.value = b.dataset.l;
    applyWindow();
  }));
  [windowSlider, levelSlider].forEach((s) => s.addEventListener("input", () => {
    document.querySelectorAll("button.preset").forEach((x) => x.classList.remove("active"));
    applyWindow();
  }));
  sliceSlider.addEventListener("input", () => show(state.plane, Number(sliceSlider.value)));
  plot.addEventListener("wheel", (event) => {
    event.preventDefault();
    step(event.deltaY > 0 ? -1 : 1);
  }, { passive: false });
  document.addEventListener("keydown", (event) => {
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    if (event.key === "ArrowUp" || event.key === "PageUp") { event.preventDefault(); step(1); }
    if (event.key === "ArrowDown" || event.key === "PageDown") { event.preventDefault(); step(-1); }
  });
  document.getElementById("opacity-all").addEventListener("input", (event) => {
    for (const st of state.structures) st.opacity = Number(event.target.value) / 100;
    structureTable();
    draw();
  });
  document.getElementById("outline-toggle").addEventListener("change", (event) => {
    state.outlines = event.target.checked;
    draw();
  });

  async function start() {
    let job;
    try {
      job = await Delineo.api(root.dataset.jobUrl);
    } catch (err) {
      showError(err.message);
      return;
    }
    const badge = document.getElementById("job-status");
    badge.className = `badge ${job.status}${job.outside_domain ? " warning" : ""}`;
    badge.textContent = job.status_label;
    if (job.status === "queued" || job.status === "running") {
      showError(`The job is ${job.status} (${job.stage} ${job.progress}%); the slices appear when it is done.`);
      setTimeout(start, 2000);
      return;
    }
    if (job.status === "failed") {
      showError(`The job failed: ${job.error}`);
      return;
    }
    showError("");
    state.job = job;
    state.structures = job.structures.map((s) => ({ ...s, visible: true, opacity: 0.4 }));
    structureTable();
    sidePanel(job);
    if (job.kind === "audit") auditTable(job.audit);
    if (job.kind === "propagate") propagationTable(job.propagation);
    applyWindow();
    await show("axial", null);
  }

  // For the contour editor (editor.js): the state, and a redraw after an edit saved a revision.
  Delineo.viewer = {
    state,
    plot,
    showError,
    async reload(revision) {
      cache.clear();
      if (revision) {
        for (const st of state.structures) {
          const m = revision.measures[st.name];
          if (m && m.volume_cm3 !== null && m.volume_cm3 !== undefined) st.volume_cm3 = m.volume_cm3;
        }
        structureTable();
      }
      await show(state.plane, state.index);
    },
    redraw: draw,
  };

  start().then(() => document.dispatchEvent(new CustomEvent("delineo:viewer-ready")));
})();
