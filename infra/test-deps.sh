#!/usr/bin/env bash
# What the browser tests, the rehearsal drills and the benchmark need from outside PyPI: Debian's
# Chromium and ChromeDriver, nginx (the ingress and the benchmark's peer) and wrk, and Uppy from
# the npm registry (tests/browser/package-lock.json). Installed when missing and possible;
# otherwise those tests say loudly that they did not run (and fail under
# MEDIA_TEST_REQUIRE_BROWSER=1 / MEDIA_TEST_REQUIRE_REHEARSAL=1, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin
missing=()
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || missing+=(chromium chromium-driver)
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian starts nginx's default site on port 80 after installing it; we run our own.
    if command -v systemctl >/dev/null; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
    if [[ -f /run/nginx.pid ]]; then nginx -s quit >/dev/null 2>&1 || true; fi
  else
    echo "missing ${missing[*]} (apt-get install ${missing[*]})" >&2
  fi
fi
if command -v npm >/dev/null; then
  if [[ ! -f tests/browser/node_modules/.package-lock.json ]] \
     || [[ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "browser tests need Node.js and npm for Uppy" >&2
fi
