# shellcheck shell=bash
# Network namespaces for everything that runs a cluster here (tests, demo,
# real node): a namespace with loopback only and no route, so a dial to any
# non-local address (a guest's Pod or node IP, a DNS server, the internet)
# fails at once with "Network is unreachable" instead of leaving the machine
# through the host's default route. Sourced; the caller defines log and die.

# netns_assert_unreachable DEST: fails unless DEST has no route from here.
netns_assert_unreachable() {
    local out
    if out="$(ip route get "$1" 2>&1)"; then die "$1 is routable here ($out): refusing to go on"; fi
    [[ "$out" == *"Network is unreachable"* ]] || die "unexpected answer for $1: $out"
}

# netns_assert_isolated: the current namespace routes none of the addresses a
# cluster here could stray to (QEMU's guest, CNI's and the real node's ranges,
# the Service range, a public address).
netns_assert_isolated() {
    local d
    for d in 1.1.1.1 10.0.2.15 10.88.0.5 10.0.0.1 10.245.0.2 192.168.77.2; do
        netns_assert_unreachable "$d"
    done
}

# netns_create NAME: a new namespace with loopback up (fails if NAME exists).
netns_create() {
    ip netns add "$1"
    ip netns exec "$1" ip link set lo up
}

# netns_delete NAME: deletes it, saying which processes are still inside.
netns_delete() {
    local left
    ip netns list | grep -qw "$1" || return 0
    left="$(ip netns pids "$1" 2>/dev/null | tr '\n' ' ')"
    [[ -z "$left" ]] || log "processes still in network namespace $1: $left"
    ip netns del "$1"
}

# netns_reap PREFIX: deletes namespaces PREFIX* left by runs that died
# (those with no process inside any more).
netns_reap() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$1" || true); do
        [[ -n "$(ip netns pids "$ns" 2>/dev/null)" ]] || ip netns del "$ns"
    done
}

# netns_inside NAME: true when this shell runs inside namespace NAME.
netns_inside() { [[ "$(ip netns identify $$ 2>/dev/null)" == "$1" ]]; }
