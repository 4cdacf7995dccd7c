/* Shared helpers of the Delineo pages (plain JS, no build step). */
"use strict";

const Delineo = {
  csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  },

  /** Fetch JSON from the API with the session; throws Error(message) on failure. */
  async api(url, options = {}) {
    const opts = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
    if (opts.body && !(opts.body instanceof FormData)) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.body);
    }
    if (opts.method && opts.method !== "GET") opts.headers["X-CSRFToken"] = Delineo.csrfToken();
    const response = await fetch(url, opts);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new Error(Delineo.errorMessage(data, response));
    return data;
  },

  /** A readable message from a DRF error body ({"detail": ...} or {"field": [...]}) */
  errorMessage(data, response) {
    if (response && response.status === 401) return "Your session has expired; please sign in again.";
    if (data && typeof data === "object") {
      if (data.detail) return String(data.detail);
      const parts = [];
      for (const [field, value] of Object.entries(data)) {
        const text = Array.isArray(value) ? value.join(" ") : String(value);
        parts.push(field === "non_field_errors" ? text : `${field}: ${text}`);
      }
      if (parts.length) return parts.join(" ");
    }
    return `The server answered ${response ? response.status : "nothing"}; please try again.`;
  },

  /** Make ``link`` wait for a file the worker writes after its job (a revision's RTSTRUCT or
   * SEG, the RTSTRUCT for the daily scan): the server answers 202 while it is queued or being
   * written, so ask with HEAD every 2 s, say so in ``status``, and download it once it is there. */
  exportLink(link, status) {
    const say = (text) => { if (status) status.textContent = text; };
    link.addEventListener("click", async (event) => {
      if (event.defaultPrevented) return;  // e.g. the domain warning was not acknowledged
      event.preventDefault();
      for (let tries = 0; tries < 150; tries++) {
        const head = await fetch(link.href, { method: "HEAD", credentials: "same-origin" });
        if (head.status !== 202) {
          if (head.ok) {
            say("");
            window.location.href = link.href;
            return;
          }
          const response = await fetch(link.href, { credentials: "same-origin", headers: { Accept: "application/json" } });
          let data = null;
          try { data = await response.json(); } catch (e) { data = null; }
          say(Delineo.errorMessage(data, response));
          return;
        }
        say("The worker is writing this file; it downloads as soon as it is ready…");
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
      say("The file is still being written; try again in a minute.");
    });
    return link;
  },

  formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 ** 2) return `${(n / 1024).toFixed(0)} KB`;
    if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MB`;
    return `${(n / 1024 ** 3).toFixed(2)} GB`;
  },

  formatSeconds(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return "";
    if (s < 60) return `${s.toFixed(1)} s`;
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  },

  el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  },
};
