// Presigned upload, end to end, with nothing but the browser's own APIs.
// 1. POST {api}/media/uploads with a bearer token -> {media_id, method, url, headers, expires_at}
// 2. PUT the file to `url` with exactly `headers` (XMLHttpRequest, for upload progress)
// 3. GET {api}/media/{media_id} until status is "ready" (or "failed")
// 4. show links.content, a signed URL that works in <img src> without a token
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$("api").value = params.get("api") || location.origin;

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function problemText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.title || ""}: ${body.detail || ""}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function sha256Hex(file) {
  // Optional: lets the server check the bytes it receives. Skipped for big files or without WebCrypto.
  if (!crypto.subtle || file.size > 64 * 1024 * 1024) return undefined;
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function presign(api, token, file) {
  const response = await fetch(`${api}/media/uploads`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({
      filename: file.name,
      content_type: file.type || "application/octet-stream",
      size: file.size,
      sha256: await sha256Hex(file),
    }),
  });
  if (!response.ok) throw new Error(`presign: ${await problemText(response)}`);
  return response.json();
}

function put(upload, file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(upload.method, upload.url);
    for (const [name, value] of Object.entries(upload.headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) $("progress").value = Math.round((100 * e.loaded) / e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText));
      else reject(new Error(`upload: ${xhr.status} ${xhr.responseText}`));
    };
    xhr.onerror = () => reject(new Error("upload: network error (is this origin in MEDIA_CORS_ORIGINS?)"));
    xhr.send(file);
  });
}

async function waitUntilReady(api, token, mediaId) {
  for (let i = 0; i < 120; i++) {
    const response = await fetch(`${api}/media/${mediaId}`, { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new Error(`status: ${await problemText(response)}`);
    const record = await response.json();
    if (record.status !== "pending") return record;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error("the upload did not become ready in time");
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const api = $("api").value.replace(/\/$/, "");
  const token = $("token").value.trim();
  const file = $("file").files[0];
  $("upload").disabled = true;
  $("preview").hidden = true;
  $("progress").value = 0;
  try {
    say("Requesting an upload URL…");
    const upload = await presign(api, token, file);
    say(`Uploading ${file.name} (${file.size} bytes)…`);
    await put(upload, file);
    say("Waiting until the upload is ready…");
    const record = await waitUntilReady(api, token, upload.media_id);
    $("record").textContent = JSON.stringify(record, null, 2);
    if (record.status !== "ready") throw new Error(`the upload ${record.status}: ${record.failure_reason}`);
    $("preview").src = record.links.content;
    $("preview").hidden = false;
    say(`ready: ${record.id}`);
  } catch (error) {
    say(error.message, true);
  } finally {
    $("upload").disabled = false;
  }
});

// Under `make run` with the development secrets, the page can fetch a token for itself.
if (!$("token").value && $("api").value === location.origin) {
  fetch("/demo/token")
    .then((r) => (r.ok ? r.json() : null))
    .then((body) => {
      if (body && !$("token").value) $("token").value = body.token;
    })
    .catch(() => {});
}
