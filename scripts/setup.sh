#!/usr/bin/env bash
# Everything odoops needs on a fresh Debian/Ubuntu machine: system packages (PostgreSQL server and
# client tools, OpenSSH server for the SSH tests), uv, and the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pg_dump >/dev/null || need+=(postgresql-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
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
