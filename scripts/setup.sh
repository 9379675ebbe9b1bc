#!/usr/bin/env bash
# Everything odoops needs on a fresh Debian/Ubuntu machine: system packages (PostgreSQL server and
# client tools, OpenSSH server for the SSH tests, Chromium and chromedriver for the UI tests), uv, the
# project's virtual environment, and a real Odoo 17.0 in a cached venv outside the checkout
# (scripts/odoo.sh) for the tests that run Odoo itself.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pg_dump >/dev/null || need+=(postgresql-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
# Debian's Chromium and its driver for the browser tests of the Prefect UI (tests/test_browser.py): no browser download.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "error: missing system packages ${need[*]}: install them (apt-get install ${need[*]})" >&2; exit 2
  fi
fi
# The Debian postgresql package starts a cluster on 5432; odoops never uses it (tests and demo run their own).

command -v uv >/dev/null || python3 -m pip install -q uv
uv sync --frozen --compile-bytecode -q
# Real Odoo 17.0 (40 s to 2 min the first time on a machine, under 1 s after): the tests find it through its env file.
echo "Odoo 17.0: $(bash scripts/odoo.sh </dev/null)"
# The Docker-API engine for the `docker` platform's tests (Podman's Docker-compatible service; TESTING.md) and a
# real Odoo 17.0 image built locally, cached outside the checkout (2-3 min the first time, a few seconds after).
need=()
for p in podman runc busybox-static mmdebstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "error: missing system packages ${need[*]}: run as root (apt-get install ${need[*]})" >&2; exit 2
  fi
fi
if [ "$(id -u)" = 0 ]; then
  echo "Odoo 17.0 image: $(bash scripts/odoo-image.sh </dev/null | tail -n 1)"
else
  echo "Odoo 17.0 image: skipped (scripts/odoo-image.sh needs root)"
fi
