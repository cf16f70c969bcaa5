#!/usr/bin/env bash
# What the browser tests, the rehearsal drills, the OAuth2 tests and the benchmark need from outside
# PyPI: Debian's Chromium and ChromeDriver, nginx (the ingress and the benchmark's peer), wrk,
# PgBouncer (the transaction-mode pooler the deployment puts in front of PostgreSQL), clamd (the
# scanner's tests start their own, with a signature database they write: no freshclam), and
# from the npm registry Uppy (tests/browser/package-lock.json) and oidc-provider (tests/oidc).
# Installed when missing and possible; otherwise those tests say loudly that they did not run (and
# fail under MEDIA_TEST_REQUIRE_BROWSER=1 / MEDIA_TEST_REQUIRE_REHEARSAL=1 / MEDIA_TEST_REQUIRE_OIDC=1,
# as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin
missing=()
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || missing+=(chromium chromium-driver)
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v pgbouncer >/dev/null || missing+=(pgbouncer)
command -v clamd >/dev/null || missing+=(clamav-daemon)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian starts nginx's default site on port 80 after installing it; we run our own.
    if command -v systemctl >/dev/null; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
    if [[ -f /run/nginx.pid ]]; then nginx -s quit >/dev/null 2>&1 || true; fi
    if command -v systemctl >/dev/null; then systemctl disable --now pgbouncer >/dev/null 2>&1 || true; fi
    if command -v systemctl >/dev/null; then
      systemctl disable --now clamav-daemon clamav-freshclam >/dev/null 2>&1 || true
    fi
  else
    echo "missing ${missing[*]} (apt-get install ${missing[*]})" >&2
  fi
fi
if command -v npm >/dev/null; then
  for dir in tests/browser tests/oidc; do  # Uppy; oidc-provider (a real OAuth2 provider)
    if [[ ! -f $dir/node_modules/.package-lock.json ]] \
       || [[ $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
  done
else
  echo "browser and OAuth2 provider tests need Node.js and npm (Uppy, oidc-provider)" >&2
fi
