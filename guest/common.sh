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

# remove_tree DIR: unmounts anything a killed build left mounted below DIR
# (mmdebstrap mounts /proc, /sys, /dev/pts in its chroot), then deletes DIR
# without crossing into any filesystem that is still mounted there.
remove_tree() {
    local m
    [ -d "$1" ] || return 0
    for m in $(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$1"
}

# cache_begin KEY: sets CACHE_DIR (final place) and BUILD_DIR (fresh temp dir on
# the same filesystem, removed on exit unless published).  Also removes the
# temp dirs of earlier builds whose process is gone (killed, machine reset).
cache_begin() {
    local d pid
    CACHE_DIR=$XENITH_CACHE/$1
    mkdir -p "$XENITH_CACHE"
    for d in "$XENITH_CACHE"/.tmp.*; do
        [ -d "$d" ] || continue
        pid=${d##*/.tmp.}; pid=${pid%%.*}
        kill -0 "$pid" 2>/dev/null || remove_tree "$d"
    done
    BUILD_DIR=$(mktemp -d "$XENITH_CACHE/.tmp.$$.$1.XXXXXX")
    trap 'remove_tree "$BUILD_DIR"' EXIT
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

# hash_files FILE...: one sha256 over the base names and contents of FILEs. Base names, not
# paths: the repository's own scripts are named by where the checkout is, and two clones of
# the same commit (CI's, a user's) must find the same cached image.
hash_files() {
    local f
    for f in "$@"; do printf '%s\n' "${f##*/}"; sha256sum < "$f"; done | sha256sum | cut -c1-64
}

# debian_sources SUITE: one "deb URI SUITE' COMPONENTS" line for each suite
# SUITE, SUITE-updates and SUITE-security that this machine's own apt
# configuration (deb822 *.sources and one-line *.list) already uses.
debian_sources() {
    debian_sources_all "$1" | awk '!seen[$0]++'
}
debian_sources_all() {
    local suite=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                delete v
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/ || index(line, ":") == 0) continue
                    k = tolower(substr(line, 1, index(line, ":") - 1))
                    val = substr(line, index(line, ":") + 1)
                    gsub(/^[ \t]+|[ \t]+$/, "", val)
                    v[k] = val
                }
                if (v["enabled"] == "no" || (" " v["types"] " ") !~ / deb /) next
                nu = split(v["uris"], u, /[ \t]+/); ns = split(v["suites"], su, /[ \t]+/)
                for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++)
                    if (su[b] == s || su[b] == s "-updates" || su[b] == s "-security")
                        print "deb " u[a] " " su[b] " " v["components"]
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk -v s="$suite" '
            $1 == "deb" && ($3 == s || $3 == s "-updates" || $3 == s "-security") {
                $1 = $1; print }'
    done
}
