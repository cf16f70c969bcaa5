// Shared by the Uppy pages: add one in-memory file to a configured Uppy and upload it.
async function uploadOne(uppy, mediaIds, base64, name, type) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const id = uppy.addFile({ name, type, data: new Blob([bytes], { type }) });
  const result = await uppy.upload();
  return {
    successful: result.successful.length,
    failed: result.failed.map((f) => String(f.error)),
    mediaId: mediaIds[id],
  };
}

// Ask the presign function for a PUT URL for `file`; remember which media record it created.
async function presign(api, token, file, mediaIds) {
  const response = await fetch(`${api}/media/uploads`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ filename: file.name, content_type: file.type, size: file.size }),
  });
  if (!response.ok) throw new Error(`presign ${response.status}: ${await response.text()}`);
  const grant = await response.json();
  mediaIds[file.id] = grant.media_id;
  return grant;
}
