#!/usr/bin/env bash
# What the browser tests need: Debian's Chromium and ChromeDriver, and Uppy from the npm registry
# (tests/browser/package-lock.json). Installed when missing and possible; otherwise the tests say
# loudly that they did not run (and fail under MEDIA_TEST_REQUIRE_BROWSER=1, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver (browser tests)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "browser tests need chromium and chromium-driver (apt-get install chromium chromium-driver)" >&2
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
