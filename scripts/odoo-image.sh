#!/usr/bin/env bash
# Build a real Odoo 17.0 container image locally, without any registry (TESTING.md, "Odoo in a container"),
# for the `docker` platform and its tests, which drive it through Podman's Docker-compatible API.
#
#   1. a Debian bookworm base rootfs made by mmdebstrap from this machine's own apt sources (never a
#      hard-coded mirror), imported as the image odoops-base:bookworm-<key>;
#   2. Python wheels for Odoo's requirements.txt built on the host (pip inside a build has neither this
#      machine's package index settings nor its certificates), installed offline into the image's venv;
#   3. a Dockerfile FROM that base: venv /opt/odoo-venv, the Odoo tree /opt/odoo (from scripts/odoo.sh:
#      ODOO_SRC, ../shared/odoo or a clone; never copied into the checkout), bytecode compiled, a system user
#      `odoo`, config /etc/odoo/odoo.conf (ODOO_RC), data_dir VOLUME /var/lib/odoo, ENTRYPOINT odoo-bin.
#
# Cache: ${ODOOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/odoops}
#   odoo-image/rootfs-<key>.tar   key: the apt sources used, the host's Acquire:: apt options, the package list
#   odoo-image/wheels-<key>/      key: requirements.txt, the host Python's version, the wheel recipe
#   podman/storage.conf           Podman's storage (overlay), graphroot podman/storage, runroot podman/run: the
#                                 image lives there and every Podman service the tests start shares it
#   image tag odoops-odoo:17.0-<key>, key: the base and wheels keys, the Odoo tree's identity (its files' paths
#   and contents) and the Dockerfile's text. Unchanged inputs: the script answers in a few seconds.
#
# Usage: scripts/odoo-image.sh                  build (or find) the image
#        scripts/odoo-image.sh --storage-conf   only write Podman's storage.conf and containers.conf and print
#                                               CONTAINERS_STORAGE_CONF=… CONTAINERS_CONF=… (no build; any user)
# Output: progress on stderr; the last line on stdout is shell words
#   ODOO_IMAGE=odoops-odoo:17.0-<key> CONTAINERS_STORAGE_CONF=<cache>/podman/storage.conf
# (also written to <cache>/odoo-image/image.env). Run as root (mmdebstrap --mode=root, Podman's storage).
set -euo pipefail

SERIES=17.0
SUITE=bookworm
PACKAGES=python3,python3-venv,libpq5,libxml2,libxslt1.1,libldap-2.5-0,libsasl2-2,libjpeg62-turbo,zlib1g,ca-certificates,curl,postgresql-client-15
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -n "${HOME:-}" ] || HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
CACHE="${ODOOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/odoops}"

log() { echo "odoo-image.sh: $*" >&2; }
die() { echo "odoo-image.sh: error: $*" >&2; exit 2; }
hash16() { sha256sum | cut -c1-16; }

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
IMG="$CACHE/odoo-image"
PODMAN_DIR="$CACHE/podman"
STORAGE_CONF="$PODMAN_DIR/storage.conf"
mkdir -p "$IMG" "$PODMAN_DIR"

# Write a file only when its content changes (other sessions may be reading it).
put_file() {
    local path="$1" text="$2"
    if [ ! -f "$path" ] || [ "$(cat "$path")" != "$text" ]; then
        printf '%s\n' "$text" >"$path.partial.$$"
        mv "$path.partial.$$" "$path"
    fi
}

# Podman's storage: kept in the cache so the image survives between test runs; every Podman process
# (this script's CLI, each test session's service) uses this one storage.conf, so graphroot and runroot
# always agree with what libpod recorded in its database.
put_file "$STORAGE_CONF" "[storage]
driver = \"overlay\"
graphroot = \"$PODMAN_DIR/storage\"
runroot = \"$PODMAN_DIR/run\""

# Podman's engine settings proven on these machines (TESTING.md): runc (crun fails on hybrid cgroups),
# cgroupfs, ulimits that can be set here. The tests' services write their own copy of the same.
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
put_file "$PODMAN_DIR/containers.conf" "[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=32768:32768\"]
log_driver = \"k8s-file\"
[engine]
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
runtime = \"runc\"
exit_command_delay = 5"

if [ "${1:-}" = "--storage-conf" ]; then
    printf 'CONTAINERS_STORAGE_CONF=%q CONTAINERS_CONF=%q\n' "$STORAGE_CONF" "$PODMAN_DIR/containers.conf"
    exit 0
fi
[ $# -eq 0 ] || die "unknown argument $1 (usage: $0 [--storage-conf])"
[ "$(id -u)" = 0 ] || die "run as root: mmdebstrap --mode=root and Podman's storage in $PODMAN_DIR need it"

# ------------------------------------------------------------------ tools
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export CONTAINERS_CONF="$PODMAN_DIR/containers.conf" CONTAINERS_STORAGE_CONF="$STORAGE_CONF"

# One build at a time (setup.sh and a test session may race); other readers of the storage are fine.
exec 9>"$CACHE/.odoo-image.lock"
flock 9
TMPDIR="$(mktemp -d "$IMG/tmp.XXXXXX")"   # podman import/build leave big files in TMPDIR
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

# ------------------------------------------------------------------ inputs
# The Odoo tree, as scripts/odoo.sh obtains it (it also installs the host packages the wheels compile with).
envfile="$(bash "$HERE/odoo.sh" </dev/null | tail -n 1)"
tree="$(. "$envfile" && echo "$ODOO_ROOT")"
[ -f "$tree/odoo-bin" ] && [ -f "$tree/requirements.txt" ] || die "$envfile names no Odoo tree ($tree)"

# The `deb URI SUITE COMPONENTS` lines of this machine's apt sources for $SUITE: one-line .list files and
# deb822 .sources files; options in brackets, deb-src and disabled entries are left out.
apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { sub(/^deb[ \t]+(\[[^]]*\][ \t]+)?/, ""); print "deb " $0 }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush(   n, m, i, j, U, S) {
                if (enabled != "no" && (" " types " ") ~ / deb /) {
                    n = split(uris, U, " "); m = split(suites, S, " ")
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print "deb " U[i] " " S[j] " " comps
                }
                types = uris = suites = comps = enabled = key = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { val = $0; gsub(/^[ \t]+|[ \t]+$/, "", val)
                       if (key == "uris") uris = uris " " val; else if (key == "suites") suites = suites " " val
                       else if (key == "components") comps = comps " " val; next }
            { i = index($0, ":"); key = tolower(substr($0, 1, i - 1)); val = substr($0, i + 1)
              gsub(/^[ \t]+|[ \t]+$/, "", val)
              if (key == "types") types = val; else if (key == "uris") uris = val
              else if (key == "suites") suites = val; else if (key == "components") comps = val
              else if (key == "enabled") enabled = tolower(val) }
            END { flush() }' "$f"
    done
}
mapfile -t sources < <(apt_sources | awk -v s="$SUITE" '
    ($3 == s || index($3, s "-") == 1 || index($3, s "/") == 1) && $2 ~ /^(https?|file):/ && !seen[$0]++')
[ ${#sources[@]} -gt 0 ] || die "no '$SUITE' source in /etc/apt/sources.list or /etc/apt/sources.list.d/: add a \
Debian $SUITE mirror to apt's sources"
# The host's Acquire:: settings that decide whether a mirror can be used (proxies, snapshot dates).
mapfile -t aptopts < <(apt-config dump | grep -iE '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' || true)

rootkey="$( { printf '%s\n' "$SUITE" "$PACKAGES" minbase "${sources[@]}" "${aptopts[@]}"; } | hash16)"
ROOTFS="$IMG/rootfs-$rootkey.tar"
BASE="odoops-base:$SUITE-$rootkey"

pyver="$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$pyver" = 3.11 ] || die "/usr/bin/python3 is $pyver: the wheels must match bookworm's Python 3.11"
wheel_recipe='pip wheel -r requirements.txt setuptools<67 (host /usr/bin/python3 venv + wheel)'
wheelkey="$( { cat "$tree/requirements.txt"; printf '%s\n' "$pyver" "$(uname -m)" "$wheel_recipe"; } | hash16)"
WHEELS="$IMG/wheels-$wheelkey"

# What the image gets of the tree: everything but VCS data and bytecode; its identity is its files' paths and
# contents (not their mtimes: CI lays a fresh copy of the same tree elsewhere, and must not rebuild for that).
treekey="$(cd "$tree" && find . \( -name .git -o -name __pycache__ \) -prune -o -type f -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | hash16)"

read -r -d '' DOCKERFILE <<'EOF' || true
ARG BASE
FROM ${BASE}
ENV LANG=C.UTF-8 PATH=/opt/odoo-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    ODOO_RC=/etc/odoo/odoo.conf
# The venv from the host-built wheels, offline; the wheels are bind-mounted, never part of a layer.
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \
    python3 -m venv /opt/odoo-venv \
 && /opt/odoo-venv/bin/pip install -q --no-cache-dir --no-index --find-links /tmp/wheels --disable-pip-version-check \
        "setuptools<67" -r /tmp/wheels/requirements.txt
COPY odoo /opt/odoo
# Bytecode compiled once here: the odoo user cannot write into /opt/odoo, so Odoo would recompile at every start.
RUN /opt/odoo-venv/bin/python -m compileall -q -j 0 /opt/odoo/odoo /opt/odoo/addons >/dev/null || true \
 && ln -s /opt/odoo/odoo-bin /usr/local/bin/odoo-bin \
 && if command -v useradd >/dev/null; then \
        useradd --system --user-group --home-dir /var/lib/odoo --shell /usr/sbin/nologin odoo; \
    else \
        echo 'odoo:x:101:101:Odoo:/var/lib/odoo:/usr/sbin/nologin' >>/etc/passwd \
     && echo 'odoo:x:101:' >>/etc/group && echo 'odoo:*:19000:0:99999:7:::' >>/etc/shadow; \
    fi \
 && mkdir -p /etc/odoo /var/lib/odoo /mnt/extra-addons \
 && chown odoo:odoo /etc/odoo /var/lib/odoo /mnt/extra-addons
COPY --chown=odoo:odoo odoo.conf /etc/odoo/odoo.conf
USER odoo
WORKDIR /var/lib/odoo
VOLUME ["/var/lib/odoo"]
EXPOSE 8069 8072
ENTRYPOINT ["odoo-bin"]
EOF
read -r -d '' ODOO_CONF <<'EOF' || true
[options]
; Odoo's defaults plus the paths of this image; mount or copy your own over /etc/odoo/odoo.conf.
data_dir = /var/lib/odoo
addons_path = /opt/odoo/addons,/opt/odoo/odoo/addons
EOF

imgkey="$( { printf '%s\n' "$SERIES" "$rootkey" "$wheelkey" "$treekey"; printf '%s\n' "$DOCKERFILE" "$ODOO_CONF"; } \
    | hash16)"
TAG="odoops-odoo:$SERIES-$imgkey"

finish() {
    local line
    line="$(printf 'ODOO_IMAGE=%q CONTAINERS_STORAGE_CONF=%q' "$TAG" "$STORAGE_CONF")"
    put_file "$IMG/image.env" "$line"
    echo "$line"
    exit 0
}

if podman image exists "$TAG"; then
    log "up to date: $TAG"
    finish
fi

# ------------------------------------------------------------------ 1. base rootfs
if [ ! -f "$ROOTFS" ]; then
    log "mmdebstrap $SUITE (minbase + $PACKAGES) from: ${sources[*]}"
    optargs=()
    for o in "${aptopts[@]}"; do optargs+=("--aptopt=$o"); done
    if ! mmdebstrap --variant=minbase --mode=root --format=tar --include="$PACKAGES" "${optargs[@]}" \
            "$SUITE" "$ROOTFS.partial" "${sources[@]}" </dev/null >"$IMG/mmdebstrap.log" 2>&1; then
        tail -n 30 "$IMG/mmdebstrap.log" >&2
        rm -f "$ROOTFS.partial"
        die "mmdebstrap failed (full log: $IMG/mmdebstrap.log)"
    fi
    mv "$ROOTFS.partial" "$ROOTFS"
fi
if ! podman image exists "$BASE"; then
    log "importing $ROOTFS as $BASE"
    podman import -q "$ROOTFS" "$BASE" >/dev/null
fi

# ------------------------------------------------------------------ 2. wheels
if [ ! -f "$WHEELS/.ready" ]; then
    log "building wheels for $tree/requirements.txt into $WHEELS"
    rm -rf "$WHEELS.partial"
    /usr/bin/python3 -m venv "$TMPDIR/w"
    if ! { PIP_NO_INPUT=1 "$TMPDIR/w/bin/pip" install -q wheel &&
           PIP_NO_INPUT=1 "$TMPDIR/w/bin/pip" wheel -q -r "$tree/requirements.txt" "setuptools<67" \
               -w "$WHEELS.partial"; } </dev/null >"$IMG/wheels.log" 2>&1; then
        tail -n 30 "$IMG/wheels.log" >&2
        rm -rf "$WHEELS.partial"
        die "building the wheels failed (full log: $IMG/wheels.log)"
    fi
    cp "$tree/requirements.txt" "$WHEELS.partial/requirements.txt"
    touch "$WHEELS.partial/.ready"
    rm -rf "$WHEELS"
    mv "$WHEELS.partial" "$WHEELS"
fi

# ------------------------------------------------------------------ 3. the image
ctx="$TMPDIR/context"
mkdir -p "$ctx/odoo"
printf '%s\n' "$DOCKERFILE" >"$ctx/Dockerfile"
printf '%s\n' "$ODOO_CONF" >"$ctx/odoo.conf"
cp -al "$WHEELS" "$ctx/wheels" 2>/dev/null || cp -a "$WHEELS" "$ctx/wheels"
tar -C "$tree" --exclude=.git --exclude=__pycache__ -cf - . | tar -C "$ctx/odoo" -xf -
log "building $TAG from $BASE"
if ! podman build -q --network=none --build-arg "BASE=$BASE" --label "odoops.image.key=$imgkey" \
        --label "odoops.odoo.series=$SERIES" -t "$TAG" -f "$ctx/Dockerfile" "$ctx" </dev/null \
        >"$IMG/build.log" 2>&1; then
    tail -n 30 "$IMG/build.log" >&2
    die "podman build failed (full log: $IMG/build.log)"
fi
log "built $TAG ($(podman image inspect --format '{{.Size}}' "$TAG") bytes)"
finish
