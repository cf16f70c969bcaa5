// Presigned upload, end to end, with nothing but the browser's own APIs.
// 1. POST {api}/media/uploads with a bearer token -> {media_id, method, url, headers, expires_at}
// 2. PUT the file to `url` with exactly `headers` (XMLHttpRequest, for upload progress)
// 3. GET {api}/media/{media_id} until status is "ready" (or "failed")
// 4. show links.content, a signed URL that works in <img src> without a token
// 5. GET it again until `processing` is done: draw the BlurHash placeholder at the image's own
//    aspect ratio (no layout shift), then swap in a <picture> built from `srcset` once it loads
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

// GET the record every half second until `field` is no longer "pending" (a minute at most).
async function waitFor(field, api, token, mediaId) {
  for (let i = 0; i < 120; i++) {
    const response = await fetch(`${api}/media/${mediaId}`, { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new Error(`${field}: ${await problemText(response)}`);
    const record = await response.json();
    if (record[field] !== "pending") return record;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`${field} was still pending after a minute`);
}


// BlurHash (https://blurha.sh), decoded into a few pixels that the canvas stretches.
const B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
const d83 = (text) => [...text].reduce((value, c) => value * 83 + B83.indexOf(c), 0);
const toLinear = (v) => ((v /= 255) <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
const toSrgb = (v) => {
  v = Math.max(0, Math.min(1, v));
  return Math.round((v <= 0.0031308 ? v * 12.92 : 1.055 * v ** (1 / 2.4) - 0.055) * 255);
};
const signPow = (v, e) => Math.sign(v) * Math.abs(v) ** e;

function blurhashPixels(hash, w, h) {
  const size = d83(hash[0]);
  const nx = (size % 9) + 1;
  const ny = Math.floor(size / 9) + 1;
  const maxAc = (d83(hash[1]) + 1) / 166;
  const dc = d83(hash.slice(2, 6));
  const colors = [[toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]];
  for (let i = 1; i < nx * ny; i++) {
    const v = d83(hash.slice(4 + i * 2, 6 + i * 2));
    const q = [Math.floor(v / 361), Math.floor(v / 19) % 19, v % 19];
    colors.push(q.map((c) => signPow((c - 9) / 9, 2) * maxAc));
  }
  const pixels = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const rgb = [0, 0, 0];
      for (let j = 0; j < ny; j++) {
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / w) * Math.cos((Math.PI * y * j) / h);
          colors[i + j * nx].forEach((c, k) => (rgb[k] += c * basis));
        }
      }
      pixels.set([...rgb.map(toSrgb), 255], 4 * (x + y * w));
    }
  }
  return new ImageData(pixels, w, h);
}

function showResponsive(record) {
  const canvas = $("placeholder");
  const w = 32;
  const h = Math.max(1, Math.round((32 * record.height) / record.width));
  canvas.width = w;
  canvas.height = h;
  canvas.style.aspectRatio = `${record.width} / ${record.height}`;
  canvas.style.background = record.dominant_color;
  canvas.getContext("2d").putImageData(blurhashPixels(record.blurhash, w, h), 0, 0);
  canvas.dataset.drawn = "true";
  canvas.hidden = false;
  const picture = $("picture");
  picture.replaceChildren();
  for (const [format, type] of [["avif", "image/avif"], ["webp", "image/webp"]]) {
    if (!record.srcset[format]) continue;
    const source = document.createElement("source");
    source.type = type;
    source.srcset = record.srcset[format];
    source.sizes = "(max-width: 700px) 100vw, 640px";
    picture.append(source);
  }
  const img = document.createElement("img");
  img.src = record.links.content;
  img.width = record.width;
  img.height = record.height;
  img.alt = record.filename;
  img.onload = () => {
    canvas.hidden = true;
    picture.hidden = false;
  };
  picture.append(img);
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const api = $("api").value.replace(/\/$/, "");
  const token = $("token").value.trim();
  const file = $("file").files[0];
  $("upload").disabled = true;
  $("preview").hidden = true;
  $("picture").hidden = true;
  $("placeholder").hidden = true;
  $("processing").textContent = "";
  $("progress").value = 0;
  try {
    say("Requesting an upload URL…");
    const upload = await presign(api, token, file);
    say(`Uploading ${file.name} (${file.size} bytes)…`);
    await put(upload, file);
    say("Waiting until the upload is ready…");
    const record = await waitFor("status", api, token, upload.media_id);
    $("record").textContent = JSON.stringify(record, null, 2);
    if (record.status !== "ready") throw new Error(`the upload ${record.status}: ${record.failure_reason}`);
    $("preview").src = record.links.content;
    $("preview").hidden = false;
    say(`ready: ${record.id}`);
    if (record.content_type.startsWith("image/")) {
      $("processing").textContent = "Making the responsive variants…";
      const processed = await waitFor("processing", api, token, record.id);
      $("record").textContent = JSON.stringify(processed, null, 2);
      $("processing").textContent = `processing: ${processed.processing}${
        processed.processing_reason ? ` (${processed.processing_reason})` : ""
      }, ${processed.variants.length} variants`;
      if (processed.processing === "done") showResponsive(processed);
    }
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
