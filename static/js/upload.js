/* Upload page: drag and drop (zip, NIfTI, or a DICOM folder via DataTransfer entries),
   file or folder pickers, then POST /api/scans/ and on to the scan page (pre-flight report,
   series and model choice) where the job is queued. */
"use strict";

(function () {
  const form = document.getElementById("upload-form");
  const dropzone = document.getElementById("dropzone");
  const fileInput = document.getElementById("file-input");
  const folderInput = document.getElementById("folder-input");
  const selectionText = document.getElementById("selection");
  const button = document.getElementById("upload-button");
  const progress = document.getElementById("upload-progress");
  const errorBox = document.getElementById("upload-error");
  const nameInput = document.getElementById("scan-name");
  const deidentifyInput = document.getElementById("deidentify");

  // What will be uploaded: {kind: "single", file} or {kind: "folder", entries: [{file, path}]}
  let selection = null;

  const isSingleName = (name) => /\.(zip|nii|nii\.gz)$/i.test(name);

  function showError(message) {
    errorBox.textContent = message;
    errorBox.classList.toggle("hidden", !message);
  }

  function setSelection(next) {
    selection = next;
    showError("");
    if (!next) {
      selectionText.textContent = "Nothing selected.";
      return;
    }
    if (next.kind === "single") {
      selectionText.textContent = `${next.file.name} (${Delineo.formatBytes(next.file.size)})`;
    } else {
      const total = next.entries.reduce((sum, e) => sum + e.file.size, 0);
      const top = next.entries[0].path.split("/")[0];
      selectionText.textContent = `Folder ${top}: ${next.entries.length} files (${Delineo.formatBytes(total)})`;
    }
  }

  // --- Drag and drop: walk directories with the FileSystem entry API -----------------
  function readAllEntries(reader) {
    return new Promise((resolve, reject) => {
      const all = [];
      const next = () => reader.readEntries((batch) => {
        if (!batch.length) resolve(all);
        else { all.push(...batch); next(); }
      }, reject);
      next();
    });
  }

  async function walk(entry, out) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: entry.fullPath.replace(/^\/+/, "") });
    } else if (entry.isDirectory) {
      for (const child of await readAllEntries(entry.createReader())) await walk(child, out);
    }
  }

  async function fromDataTransfer(dt) {
    const entries = [];
    if (dt.items && dt.items.length && dt.items[0].webkitGetAsEntry) {
      for (const item of dt.items) {
        const entry = item.kind === "file" ? item.webkitGetAsEntry() : null;
        if (entry) entries.push(entry);
      }
    }
    if (entries.length === 1 && entries[0].isFile) {
      return { kind: "single", file: dt.files[0] };
    }
    if (entries.length) {
      const files = [];
      for (const entry of entries) await walk(entry, files);
      if (files.length === 1 && isSingleName(files[0].file.name) && entries[0].isFile) {
        return { kind: "single", file: files[0].file };
      }
      return files.length ? { kind: "folder", entries: files } : null;
    }
    // No entry API: plain files only.
    if (dt.files.length === 1) return { kind: "single", file: dt.files[0] };
    return { kind: "folder", entries: Array.from(dt.files, (f) => ({ file: f, path: f.name })) };
  }

  ["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => dropzone.classList.remove("over")));
  dropzone.addEventListener("drop", async (event) => {
    event.preventDefault();
    try {
      const next = await fromDataTransfer(event.dataTransfer);
      if (!next) throw new Error("The dropped folder is empty.");
      setSelection(next);
      fileInput.value = "";
      folderInput.value = "";
    } catch (err) {
      showError(`Could not read what was dropped: ${err.message || err}`);
    }
  });

  fileInput.addEventListener("change", () => {
    folderInput.value = "";
    setSelection(fileInput.files.length ? { kind: "single", file: fileInput.files[0] } : null);
  });
  folderInput.addEventListener("change", () => {
    fileInput.value = "";
    const entries = Array.from(folderInput.files, (f) => ({ file: f, path: f.webkitRelativePath || f.name }));
    setSelection(entries.length ? { kind: "folder", entries } : null);
  });

  // --- Submit: scan, then job ------------------------------------------------------------
  function postScan(formData) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/scans/");
      xhr.setRequestHeader("X-CSRFToken", Delineo.csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (event) => {
        if (!event.lengthComputable) return;
        const pct = Math.round((100 * event.loaded) / event.total);
        progress.querySelector(".bar").style.width = `${pct}%`;
        progress.querySelector(".label").textContent =
          pct < 100 ? `Uploading… ${pct}%` : "Checking the upload…";
      });
      xhr.addEventListener("load", () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status === 201) resolve(data);
        else reject(new Error(Delineo.errorMessage(data, { status: xhr.status })));
      });
      xhr.addEventListener("error", () => reject(new Error("The upload was interrupted (network error).")));
      xhr.send(formData);
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!selection) {
      showError("Choose or drop a zip, a DICOM folder or a NIfTI file first.");
      return;
    }
    const formData = new FormData();
    if (selection.kind === "single") {
      formData.append("file", selection.file, selection.file.name);
    } else {
      for (const entry of selection.entries) {
        formData.append("files", entry.file, entry.file.name);
        formData.append("paths", entry.path);
      }
    }
    if (nameInput.value.trim()) formData.append("name", nameInput.value.trim());
    for (const field of ["patient_id", "patient_label"]) {
      const input = document.querySelector(`#upload-form input[name=${field}]`);
      if (input && input.value.trim()) formData.append(field, input.value.trim());
    }
    // Always sent, so that an unticked box is not overridden by the server's default.
    formData.append("deidentify", deidentifyInput.checked ? "true" : "false");
    button.disabled = true;
    showError("");
    progress.classList.remove("hidden");
    try {
      const scan = await postScan(formData);
      window.location.href = `/scans/${encodeURIComponent(scan.id)}/`;
    } catch (err) {
      showError(err.message);
      progress.classList.add("hidden");
      button.disabled = false;
    }
  });
})();
