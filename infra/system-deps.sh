#!/usr/bin/env bash
# System libraries the Python packages need: libmagic (python-magic). Installed with apt-get
# when missing and we are root; otherwise say what to install.
set -euo pipefail
PATH=$PATH:/sbin:/usr/sbin
if ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1'; then exit 0; fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing libmagic1 (python-magic needs it)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmagic1 >/dev/null
else
  echo "libmagic is missing: install it (Debian/Ubuntu: apt-get install libmagic1; macOS: brew install libmagic)" >&2
  exit 1
fi
