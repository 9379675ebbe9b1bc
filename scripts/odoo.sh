#!/usr/bin/env bash
# Obtain Odoo 17.0 the way an operator's machine would and install it into a cached virtual environment
# outside the checkout, for the tests and the demo that need a real Odoo server.
#
# Where Odoo comes from (first that applies):
#   1. ODOO_SRC: an Odoo 17.0 source tree (the folder holding odoo-bin), or a folder holding install.sh and 17.0/
#   2. ../shared/odoo beside the checkout (a trimmed 17.0 tree with its install.sh), when it exists
#   3. a shallow clone of Odoo's public 17.0 branch (or ODOO_GIT_URL's) into the cache (needs internet)
#
# Where it goes: ${ODOOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/odoops}/odoo-17.0-<key>, the key being a hash
# of requirements.txt, the installer and the tree's path, so a second run on the same machine takes about 1 s.
# The venv gets an `odoo-bin` wrapper (its Python, the tree's odoo-bin, a writable bytecode cache: the tree
# may be read-only) and an env file `odoo.env` (shell KEY=VALUE lines: ODOO_BIN, ODOO_PYTHON, ODOO_ROOT,
# ODOO_ADDONS_PATH, ODOO_VENV, ODOO_VERSION, PYTHONPYCACHEPREFIX).
#
# Output: progress on stderr; the path of the env file as the last (only) line on stdout.
set -euo pipefail

SERIES=17.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECKOUT="$(cd "$HERE/.." && pwd)"
[ -n "${HOME:-}" ] || HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
CACHE="${ODOOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/odoops}"
GIT_URL="${ODOO_GIT_URL:-https://github.com/odoo/odoo}"  # ODOO_GIT_URL: a mirror, e.g. a company git server

log() { echo "odoo.sh: $*" >&2; }
die() { echo "odoo.sh: error: $*" >&2; exit 2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "missing system packages: run as root or install them first ($*)"
    fi
}

apt_install() {
    command -v apt-get >/dev/null || die "missing packages ($*) and no apt-get: install them by hand"
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
PYCACHE="$CACHE/pycache"

# ------------------------------------------------------------------ 1. the source tree
installer=""
if [ -n "${ODOO_SRC:-}" ]; then
    [ -d "$ODOO_SRC" ] || die "ODOO_SRC=$ODOO_SRC is not a folder: point it at an Odoo $SERIES source tree"
    src="$(cd "$ODOO_SRC" && pwd)"
    if [ -f "$src/install.sh" ] && [ -f "$src/$SERIES/odoo-bin" ]; then
        installer="$src/install.sh"; tree="$src/$SERIES"
    elif [ -f "$src/odoo-bin" ]; then
        tree="$src"
    else
        die "ODOO_SRC=$ODOO_SRC holds neither odoo-bin nor install.sh with $SERIES/: point it at an Odoo $SERIES tree"
    fi
    origin="ODOO_SRC"
elif [ -f "$CHECKOUT/../shared/odoo/install.sh" ] && [ -f "$CHECKOUT/../shared/odoo/$SERIES/odoo-bin" ]; then
    shared="$(cd "$CHECKOUT/../shared/odoo" && pwd)"
    installer="$shared/install.sh"; tree="$shared/$SERIES"
    origin="../shared/odoo"
else
    tree="$CACHE/src/odoo-$SERIES"
    origin="git clone of $GIT_URL $SERIES"
fi

# Everything below changes the cache: one run at a time (setup.sh and a test session may race).
exec 9>"$CACHE/.odoo.lock"
flock 9

if [ -z "$installer" ] && [ ! -f "$tree/odoo-bin" ]; then
    command -v git >/dev/null || apt_install git ca-certificates
    log "cloning Odoo $SERIES (shallow) from $GIT_URL into $tree"
    rm -rf "$tree.partial"
    mkdir -p "$(dirname "$tree")"
    GIT_TERMINAL_PROMPT=0 git clone -q --depth 1 -b "$SERIES" "$GIT_URL" "$tree.partial" </dev/null \
        || die "could not clone $GIT_URL (no internet?): set ODOO_SRC to a local Odoo $SERIES tree"
    mv "$tree.partial" "$tree"
fi
grep -q "^version_info = (${SERIES%%.*}, ${SERIES#*.}," "$tree/odoo/release.py" 2>/dev/null \
    || die "$tree is not Odoo $SERIES (odoo/release.py): point ODOO_SRC at an Odoo $SERIES tree"
[ -f "$tree/requirements.txt" ] || die "$tree has no requirements.txt"

# ------------------------------------------------------------------ 2. the cached venv
# The installer's text is part of the key: install.sh when the source brings one, else this script's own
# installer below (its function definition).
own_installer() {
    local py="" c
    if command -v python3.11 >/dev/null; then py=python3.11
    else
        for c in python3 python3.12 python3.10; do
            if command -v "$c" >/dev/null && "$c" -c \
                'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
                py="$c"; break
            fi
        done
    fi
    local missing=()
    [ -n "$py" ] || missing+=(python3 python3-venv python3-dev)
    if [ -n "$py" ]; then
        local v; v="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        "$py" -c 'import ensurepip' >/dev/null 2>&1 || missing+=("python$v-venv")
        "$py" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(
            os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || missing+=("python$v-dev")
    fi
    local p
    for p in build-essential libpq-dev libldap2-dev libsasl2-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    command -v psql >/dev/null && command -v pg_dump >/dev/null || missing+=(postgresql-client)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    [ -n "$py" ] || py=python3
    [ -x "$1/bin/python" ] || "$py" -m venv "$1"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$1/bin/python" -m pip install -q "setuptools<67" wheel >&2
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$1/bin/python" -m pip install -q -r "$tree/requirements.txt" "setuptools<67" >&2
}

if [ -n "$installer" ]; then installer_text="$(cat "$installer")"; else installer_text="$(declare -f own_installer)"; fi
# The venv depends on what is installed, not on where the tree lies (CI lays a fresh copy of it elsewhere):
# its key is the requirements and the installer. The wrapper and env file, which name the tree, live in a
# small folder of their own keyed by the tree's path, rewritten in a moment when missing.
key="$( { cat "$tree/requirements.txt"; printf '%s\n' "$installer_text"; } | sha256sum | cut -c1-16)"
VENV="$CACHE/odoo-$SERIES-$key"
RUN="$CACHE/odoo-$SERIES-run-$(printf '%s' "$tree" | sha256sum | cut -c1-16)"
ENVFILE="$RUN/odoo.env"
STAMP="$VENV/.odoops-ready"
TREESTAMP="$RUN/.compiled"

compile_tree() {
    # Compile the tree into the writable bytecode cache (the tree may be read-only; these machines set
    # PYTHONDONTWRITEBYTECODE, so without this every odoo-bin process would compile Odoo again).
    log "compiling $tree into $PYCACHE"
    PYTHONPYCACHEPREFIX="$PYCACHE" "$VENV/bin/python" -m compileall -q -j 0 "$tree/odoo" "$tree/addons" \
        >/dev/null 2>&1 || true
}

write_runner() {
    # The wrapper (this venv's Python, this tree's odoo-bin, a writable bytecode cache) and the env file.
    mkdir -p "$RUN/bin"
    cat >"$RUN/bin/odoo-bin.partial" <<EOF
#!/bin/sh
# Odoo $SERIES from $tree, run by the Python of $VENV with a writable bytecode cache (written by scripts/odoo.sh).
PYTHONPYCACHEPREFIX="\${PYTHONPYCACHEPREFIX:-$PYCACHE}"
export PYTHONPYCACHEPREFIX
exec "$VENV/bin/python" "$tree/odoo-bin" "\$@"
EOF
    chmod 755 "$RUN/bin/odoo-bin.partial"
    mv "$RUN/bin/odoo-bin.partial" "$RUN/bin/odoo-bin"
    version="$("$RUN/bin/odoo-bin" --version 2>/dev/null | tail -n 1)"
    case "$version" in
        *" $SERIES"*) ;;
        *) die "the installed odoo-bin answers '${version:-nothing}', not Odoo $SERIES: delete $VENV and re-run" ;;
    esac
    {
        printf 'ODOO_VERSION=%q\n' "$SERIES"
        printf 'ODOO_VENV=%q\n' "$VENV"
        printf 'ODOO_PYTHON=%q\n' "$VENV/bin/python"
        printf 'ODOO_BIN=%q\n' "$RUN/bin/odoo-bin"
        printf 'ODOO_ROOT=%q\n' "$tree"
        printf 'ODOO_ADDONS_PATH=%q\n' "$tree/addons,$tree/odoo/addons"
        printf 'PYTHONPYCACHEPREFIX=%q\n' "$PYCACHE"
    } >"$ENVFILE.partial"
    mv "$ENVFILE.partial" "$ENVFILE"
    log "ready: $version ($RUN/bin/odoo-bin)"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && [ -x "$VENV/bin/python" ]; then
    # Same inputs: the venv is ready. This tree needs its wrapper once, and compiling when it is new or changed.
    if [ ! -f "$TREESTAMP" ] || [ -n "$(find "$tree/odoo" "$tree/addons" -name '*.py' -newer "$TREESTAMP" -print -quit)" ]; then
        compile_tree
        mkdir -p "$RUN"
        touch "$TREESTAMP"
    fi
    [ -f "$ENVFILE" ] && [ -x "$RUN/bin/odoo-bin" ] || write_runner
    echo "$ENVFILE"
    exit 0
fi

log "installing Odoo $SERIES from $origin ($tree) into $VENV"
export PYTHONPYCACHEPREFIX="$PYCACHE"
if [ -n "$installer" ]; then
    bash "$installer" "$VENV" </dev/null >&2
else
    own_installer "$VENV" </dev/null
fi

compile_tree
mkdir -p "$RUN"
touch "$TREESTAMP"
write_runner
echo "$key" >"$STAMP.partial"
mv "$STAMP.partial" "$STAMP"
echo "$ENVFILE"
