# vif-common.sh: argument handling shared by vif-bridge, vif-route and vif-nat.
#
#   vif-SCRIPT online|offline [vif=NAME] [bridge=BR] [mac=MAC] [ip="A.B.C.D ..."] [netdev=DEV]
#
# `add` and `remove` are accepted as synonyms of online and offline. vif (the host-side
# interface, vifDOMID.DEVID) is required; bridge, mac and ip, when not given, are read
# from $XENBUS_PATH in xenstore if that is set.
. "$(dirname "$0")/xen-network-common.sh"

command=${1:-}
[ $# -gt 0 ] && shift
set_vars "$@"

case $command in
    online|add) command=online ;;
    offline|remove) command=offline ;;
    *) log err "usage: ${0##*/} online|offline vif=NAME [bridge=BR] [mac=MAC] [ip=ADDRS]"; exit 2 ;;
esac

[ -n "${vif:-}" ] || fatal "vif= is required (the host-side interface, e.g. vif1.0)"
mac=${mac:-$(xs_read mac '')}
ip=${ip:-$(xs_read ip '')}
