# Shared by the guest build scripts (sourced, bash).  Cache layout:
#   ${XENITH_CACHE:-/var/cache/xenith}/<key>/   one finished build, never changed
#   ${XENITH_CACHE:-/var/cache/xenith}/.tmp.*   builds in progress (renamed into
#                                               place when complete)
# A <key> directory exists only if its build finished, because it appears by a
# single rename.

XENITH_CACHE=${XENITH_CACHE:-/var/cache/xenith}

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

need() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || die "missing tool '$t' (see guest/README.md)"
    done
}

# apt_candidate PKG: the version apt would install now.
apt_candidate() {
    local v
    v=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "apt knows no candidate for $1 (apt-get update?)"
    printf '%s\n' "$v"
}

# kernel_package: the versioned kernel package linux-image-cloud-amd64 pulls in.
kernel_package() {
    local p
    p=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [ -n "$p" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
    printf '%s\n' "$p"
}

# apt_fetch DIR PKG...: download .debs into DIR without installing anything.
apt_fetch() {
    local dir=$1; shift
    ( cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "$@" >/dev/null ) \
        || die "apt-get download $* failed"
}

# cache_begin KEY: sets CACHE_DIR (final place) and BUILD_DIR (fresh temp dir on
# the same filesystem, removed on exit unless published).
cache_begin() {
    CACHE_DIR=$XENITH_CACHE/$1
    mkdir -p "$XENITH_CACHE"
    BUILD_DIR=$(mktemp -d "$XENITH_CACHE/.tmp.$1.XXXXXX")
    trap 'rm -rf "$BUILD_DIR"' EXIT
    trap 'exit 130' INT TERM HUP
}

# cache_publish: move BUILD_DIR/out to CACHE_DIR in one rename.  If another
# build got there first, keep theirs.
cache_publish() {
    chmod 0755 "$BUILD_DIR/out"
    mv -T "$BUILD_DIR/out" "$CACHE_DIR" 2>/dev/null || [ -d "$CACHE_DIR" ] \
        || die "cannot publish $CACHE_DIR"
}

# cache_export OUTDIR FILE...: copy cached files into OUTDIR (copies, not
# links: a guest writes to its disk image and must not change the cache).
cache_export() {
    local out=$1 f; shift
    mkdir -p "$out"
    for f in "$@"; do
        cp --sparse=always --reflink=auto "$CACHE_DIR/$f" "$out/.$f.part"
        mv -f "$out/.$f.part" "$out/$f"
    done
}

# hash_files FILE...: one sha256 over the names and contents of FILEs.
hash_files() {
    local f
    for f in "$@"; do printf '%s\n' "$f"; sha256sum < "$f"; done | sha256sum | cut -c1-64
}
