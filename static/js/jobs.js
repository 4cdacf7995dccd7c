/* Job list: renders GET /api/jobs/ and polls it while a job is queued or running. */
"use strict";

(function () {
  const body = document.getElementById("jobs-body");
  const me = document.getElementById("jobs-table").dataset.user;
  const highlight = new URLSearchParams(window.location.search).get("new");
  const { el } = Delineo;
  let timer = null;

  function statusCell(job) {
    const label = job.outside_domain ? job.status_label
      : { queued: "Queued", running: "Running", succeeded: "Done", failed: "Failed" }[job.status] || job.status;
    const badge = `badge ${job.status}${job.outside_domain ? " warning" : ""}`;
    return el("td", {}, el("span", { class: badge, "data-status": job.status, title: job.outside_domain ? job.domain.reasons.join("; ") : null, text: label }));
  }

  const KIND = { segment: "Delineation", audit: "Contour audit", propagate: "Contour propagation" };
  const VIEW = { audit: "View audit", propagate: "View and choose" };

  function progressCell(job) {
    if (job.status === "failed") return el("td", { class: "error-text", text: job.error || "Failed" });
    const pct = job.status === "succeeded" ? 100 : job.progress;
    const stage = job.status === "queued" ? "waiting for a worker" : job.status === "succeeded" ? "done" : job.stage;
    return el("td", {},
      el("div", { class: "progress small" },
        el("div", { class: "bar", style: `width:${pct}%` }),
        el("span", { class: "label", text: `${stage} ${pct}%` })));
  }

  function resultsCell(job) {
    if (job.status !== "succeeded") return el("td");
    const d = job.downloads || {};
    return el("td", { class: "links" },
      el("a", { href: job.viewer, class: "view-link", text: VIEW[job.kind] || "View" }),
      d.labels ? el("a", { href: d.labels, text: "Labels" }) : null,
      d.structures_zip ? el("a", { href: d.structures_zip, text: "Masks" }) : null,
      d.rtstruct ? Delineo.exportLink(el("a", {
        href: d.rtstruct, text: "RTSTRUCT",
        title: job.rtstruct_check ? `round-trip check: Dice ≥ ${job.rtstruct_check.min_dice.toFixed(3)}` : "",
      })) : null,
      d.seg ? Delineo.exportLink(el("a", { href: d.seg, text: "SEG" })) : null,
      d.ct_dicom ? el("a", { href: d.ct_dicom, text: "CT (DICOM)" }) : null,
      d.audit ? el("a", { href: d.audit, text: "Audit (JSON)" }) : null,
      d.final_rtstruct ? Delineo.exportLink(el("a", { href: d.final_rtstruct, text: "RTSTRUCT (kept contours)" })) : null);
  }

  function render(jobs) {
    body.replaceChildren();
    if (!jobs.length) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: 8 }, "No jobs yet. ", el("a", { href: "/upload/", text: "Upload a scan" }), " to start.")));
      return;
    }
    for (const job of jobs) {
      const created = new Date(job.created);
      const total = job.timings && job.timings.total;
      body.append(el("tr", { "data-job-id": job.id, class: job.id === highlight ? "highlight" : null },
        el("td", {},
          el("a", { href: `/scans/${job.scan}/`, text: job.scan_name }),
          job.owner !== me ? el("small", { class: "owner", text: ` shared by ${job.owner}` }) : null),
        el("td", { class: `kind ${job.kind}`, text: KIND[job.kind] || job.kind }),
        el("td", { text: job.model }),
        statusCell(job),
        progressCell(job),
        el("td", { text: created.toLocaleString() }),
        el("td", { text: total ? Delineo.formatSeconds(total) : "" }),
        resultsCell(job)));
    }
  }

  async function refresh() {
    try {
      const jobs = await Delineo.api("/api/jobs/");
      render(jobs);
      const active = jobs.some((j) => j.status === "queued" || j.status === "running");
      timer = setTimeout(refresh, active ? 1500 : 10000);
    } catch (err) {
      timer = setTimeout(refresh, 5000);
    }
  }

  refresh();
})();
