# xen-network-common.sh: helpers sourced by the network-* and vif-* scripts.
# POSIX sh; uses iproute2 (`ip`) only, plus xenstore-read/-write when XENBUS_PATH is set.
#
# Every script takes its command first, then any number of VAR=VALUE words, which set
# shell variables of those names (Xen 3.0's convention: `vif-bridge online vif=vif1.0
# bridge=xenbr0`). Variables may also come from the environment.

PATH=/sbin:/usr/sbin:/bin:/usr/bin:$PATH

# log LEVEL MESSAGE...: one line on stderr, and to syslog when logger exists.
log() {
    level=$1; shift
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    command -v logger >/dev/null 2>&1 && logger -p "daemon.$level" -t "${0##*/}" -- "$*" 2>/dev/null
    return 0
}

# fatal MESSAGE...: log, tell xend through xenstore, exit 1.
fatal() {
    log err "$*"
    hotplug_status error
    exit 1
}

# set_vars WORD...: VAR=VALUE words become shell variables; anything else is an error.
set_vars() {
    for word in "$@"; do
        case $word in
            *=*) ;;
            *) fatal "unexpected argument '$word' (expected VAR=VALUE)" ;;
        esac
        name=${word%%=*}
        case $name in
            ''|[0-9]*|*[!A-Za-z0-9_]*) fatal "bad variable name in '$word'" ;;
        esac
        eval "$name=\${word#*=}"
    done
}

# xs_read KEY DEFAULT: $XENBUS_PATH/KEY from xenstore, or DEFAULT.
xs_read() {
    if [ -n "${XENBUS_PATH:-}" ] && command -v xenstore-read >/dev/null 2>&1; then
        xenstore-read "$XENBUS_PATH/$1" 2>/dev/null && return 0
    fi
    printf '%s\n' "$2"
}

# hotplug_status connected|error: what xend waits for under $XENBUS_PATH.
hotplug_status() {
    if [ -n "${XENBUS_PATH:-}" ] && command -v xenstore-write >/dev/null 2>&1; then
        xenstore-write "$XENBUS_PATH/hotplug-status" "$1" 2>/dev/null || true
    fi
}

# link_exists DEV
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# first_ipv4 DEV: the first IPv4 address of DEV (without prefix length), or nothing.
first_ipv4() {
    ip -4 -o addr show dev "$1" 2>/dev/null | while read -r _ _ _ addr _; do
        printf '%s\n' "${addr%/*}"; break
    done
}

# sysctl_set PATH VALUE: write under /proc/sys (per network namespace for net.*).
sysctl_set() {
    [ -w "/proc/sys/$1" ] && printf '%s\n' "$2" > "/proc/sys/$1"
}
