#!/usr/bin/env bash
# A real Kubernetes node in the QEMU guest (Debian's kernel), joined to a
# control plane of its own, everything inside a network namespace that has
# only loopback and no route: nothing started here can reach a non-local
# address (the API server dials node and Pod IPs; without the namespace those
# dials would follow the host's default route off the machine).
#
# Phases:
#   1. outside the namespace: build/collect binaries (hack/realnode/build.sh,
#      hack/controlplane/build.sh must have run), the kernel, the initramfs
#      (kubelet, containerd, shim, runc, ctr, iptables-nft in it: exec from 9p
#      costs seconds per big binary under TCG), the 9p share with the configs
#   2. `ip netns add`, loopback up, assert 10.0.2.15 and 10.88.0.5 unreachable
#   3. inside it: etcd + kube-apiserver + kcm + scheduler (hack/controlplane),
#      the registry with the pause image, QEMU; wait for Node Ready and the
#      static Pod Running; print the timeline
#
# Env: KMM_RUN (default /tmp/kmm-realnode), KMM_RN_NETNS (default kmm-realnode),
#      KMM_APISERVER_PORT (26443), KMM_REGISTRY_PORT (25000), KMM_RN_TIMEOUT (600 s)
# Stop everything with hack/realnode/stop.sh. Logs: $KMM_RUN/{console.log,share/logs/,logs/}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export KMM_RUN="${KMM_RUN:-/tmp/kmm-realnode}"
export KMM_RN_NETNS="${KMM_RN_NETNS:-kmm-realnode}"
export KMM_APISERVER_PORT="${KMM_APISERVER_PORT:-26443}"
export KMM_REGISTRY_PORT="${KMM_REGISTRY_PORT:-25000}"
# Own ports, so that this never collides with a default control plane even if
# someone runs it outside the namespace by mistake.
export KMM_ETCD_PORT="${KMM_ETCD_PORT:-23791}" KMM_ETCD_PEER_PORT="${KMM_ETCD_PEER_PORT:-23801}"
export KMM_KCM_PORT="${KMM_KCM_PORT:-20257}" KMM_SCHEDULER_PORT="${KMM_SCHEDULER_PORT:-20259}"
timeout="${KMM_RN_TIMEOUT:-600}"
run="$KMM_RUN"
share="$run/share"
log() { printf '[realnode/start %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=../lib/netns.sh
source "$here/../lib/netns.sh"
assert_unreachable() { netns_assert_unreachable "$1"; log "ip route get $1: unreachable"; }

# ------------------------------------------------------------ phase 3 (in the namespace)
if [[ "${1:-}" == --in-netns ]]; then
    [[ "$(ip netns identify $$)" == "$KMM_RN_NETNS" ]] || die "not inside netns $KMM_RN_NETNS"
    assert_unreachable 10.0.2.15
    assert_unreachable 10.88.0.5
    assert_unreachable 1.1.1.1
    # shellcheck disable=SC1091
    source "$run/paths"
    t0=$(date +%s.%N)
    # kubectl logs/exec and node proxy: the API server dials the kubelet at the
    # node's InternalIP (not its name: that would need DNS, which goes nowhere
    # here; seen: a lookup sent to the host's DNS server) with a client certificate the kubelet's webhook authorizer accepts
    # (admin: system:masters; issued by hack/controlplane before the API server starts).
    # --enable-aggregator-routing: webhook calls go to the Service's endpoint
    # (a Pod IP, routed over the tap), not its ClusterIP (no kube-proxy in this
    # namespace; seen: "dial tcp 10.0.0.18:443: connect: network is unreachable").
    KMM_APISERVER_EXTRA_ARGS="--kubelet-client-certificate=$run/pki/admin.crt --kubelet-client-key=$run/pki/admin.key --kubelet-preferred-address-types=InternalIP --enable-aggregator-routing=true" \
        START_CONTROLLERS=1 bash "$repo/hack/controlplane/start.sh"
    bash "$repo/hack/registry/start.sh"
    t_cp=$(date +%s.%N)
    kc="$run/admin.kubeconfig"
    k() { "$CP_BIN/kubectl" --kubeconfig "$kc" "$@"; }
    reg="127.0.0.1:$KMM_REGISTRY_PORT"
    skopeo copy -q --dest-tls-verify=false "oci:$PAUSE_OCI:3.10" "docker://$reg/pause:3.10"

    pki="$run/pki"
    b64() { base64 -w0 <"$1"; }
    # guest_kubeconfig NAME SUBJECT: a client certificate for SUBJECT signed by
    # the cluster CA and $share/NAME.kubeconfig using it (server: the API
    # server as the guest reaches it).
    guest_kubeconfig() {
        local name="$1" subj="$2"
        if [[ ! -f "$pki/$name.crt" ]]; then
            openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" \
                -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
            printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' \
                >"$pki/$name.ext"
            openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
                -sha256 -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
        fi
        cat >"$share/$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: kmm-rs, cluster: {server: "https://10.0.2.2:$KMM_APISERVER_PORT", certificate-authority-data: $(b64 "$pki/ca.crt")}}]
users: [{name: $name, user: {client-certificate-data: $(b64 "$pki/$name.crt"), client-key-data: $(b64 "$pki/$name.key")}}]
contexts: [{name: $name, context: {cluster: kmm-rs, user: $name}}]
current-context: $name
KC
    }
    # kubelet: the Node authorizer and NodeRestriction want O=system:nodes,
    # CN=system:node:<node name>. kube-proxy: the default binding of
    # ClusterRole system:node-proxier names user system:kube-proxy.
    guest_kubeconfig kubelet "/O=system:nodes/CN=system:node:kmm-guest"
    guest_kubeconfig kube-proxy "/CN=system:kube-proxy"
    # The `kubernetes` Service's endpoint as Pods in the guest reach the API
    # server: 10.0.2.2 (QEMU's alias for this namespace's loopback). The API
    # server keeps no endpoints itself here (--endpoint-reconciler-type=none:
    # it advertises 127.0.0.1), and the Service has no selector, so this slice
    # is left alone by the EndpointSlice controller. kube-proxy in the guest
    # programs 10.0.0.1:443 from it.
    k apply -f - >&2 <<ES
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-guest
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: hack.realnode}
addressType: IPv4
endpoints: [{addresses: ["10.0.2.2"], conditions: {ready: true}}]
ports: [{name: https, port: $KMM_APISERVER_PORT, protocol: TCP}]
ES
    cp "$pki/ca.crt" "$share/ca.crt"

    # A local path from the API server into the guest, for the kubelet (logs,
    # exec, node proxy: the node's InternalIP is the guest's end of the tap) and
    # for webhooks served by Pods (Pod CIDR routed to the guest). The namespace
    # still has no other link: everything else stays unreachable.
    ip tuntap add dev rntap0 mode tap
    ip addr add 192.168.77.1/30 dev rntap0
    ip link set rntap0 up
    ip route add 10.245.0.0/24 via 192.168.77.2
    assert_unreachable 10.88.0.5
    assert_unreachable 1.1.1.1
    assert_unreachable 10.0.2.15
    log "ip route get 10.245.0.5: $(ip route get 10.245.0.5 | sed -n 1p)"
    t_qemu=$(date +%s.%N)
    log "starting QEMU (initramfs $(du -h "$INITRD" | cut -f1))"
    setsid nice -n 19 qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m 2048 -smp 1 -no-reboot -nodefaults \
        -display none -kernel "$KDIR/vmlinux" -initrd "$INITRD" -serial "file:$run/console.log" \
        -nic user,model=virtio-net-pci,mac=52:54:00:12:34:56 \
        -netdev tap,id=tap0,ifname=rntap0,script=no,downscript=no -device virtio-net-pci,netdev=tap0,mac=52:54:00:77:00:02 \
        -virtfs "local,path=$share,mount_tag=host0,security_model=none,id=fs0" \
        -append "console=ttyS0 panic=-1 quiet" -pidfile "$run/qemu.pid" \
        </dev/null >"$run/qemu.log" 2>&1 &
    deadline=$((SECONDS + timeout))
    ready=""
    while ((SECONDS < deadline)); do
        if [[ "$(k get node kmm-guest -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]; then
            ready=$(date +%s.%N); break
        fi
        kill -0 "$(cat "$run/qemu.pid" 2>/dev/null || echo 0)" 2>/dev/null || { tail -20 "$run/console.log" >&2; die "QEMU exited"; }
        sleep 1
    done
    [[ -n "$ready" ]] || { tail -20 "$run/console.log" >&2; die "node kmm-guest not Ready after ${timeout}s"; }
    k get node kmm-guest -o wide
    pod=""
    while ((SECONDS < deadline)); do
        if [[ "$(k -n default get pod pause-kmm-guest -o 'jsonpath={.status.phase}' 2>/dev/null)" == Running ]]; then
            pod=$(date +%s.%N); break
        fi
        sleep 1
    done
    # The API server -> kubelet path (10.0.2.15:40250 on our loopback -> QEMU hostfwd).
    log "kubelet through the API server: /healthz says '$(k get --raw /api/v1/nodes/kmm-guest/proxy/healthz 2>&1)'"
    k -n default logs pause-kmm-guest >/dev/null && log "kubectl logs pause-kmm-guest: ok"
    # kube-proxy in the guest: the `kubernetes` Service (the Pods' way to the
    # API server) programmed from the EndpointSlice above.
    svc=""
    while ((SECONDS < deadline)); do
        if bash "$here/guest-exec.sh" 'iptables -t nat -S KUBE-SERVICES | grep -q "10.0.0.1/32"' >/dev/null 2>&1; then
            svc=$(date +%s.%N); break
        fi
        sleep 2
    done
    [[ -n "$svc" ]] || { tail -20 "$share/logs/kube-proxy.log" >&2; die "kube-proxy did not program 10.0.0.1:443"; }
    # A DaemonSet: scheduler + DaemonSet controller + kubelet + image pull from the registry.
    t_ds=$(date +%s.%N)
    sed "s#@REGISTRY@#$reg#g" "$here/guest/daemonset.yaml" | k apply -f - >&2
    ds=""
    while ((SECONDS < deadline)); do
        if [[ "$(k -n default get ds pause -o 'jsonpath={.status.numberReady}' 2>/dev/null)" == 1 ]]; then
            ds=$(date +%s.%N); break
        fi
        sleep 1
    done
    k -n default get pod -o wide || true
    secs() { printf '%.1f' "$(echo "$2 - $1" | bc)"; }
    {
        echo "control plane + registry up: $(secs "$t0" "$t_cp") s"
        echo "QEMU start -> Node Ready: $(secs "$t_qemu" "$ready") s"
        [[ -n "$pod" ]] && echo "QEMU start -> static Pod Running: $(secs "$t_qemu" "$pod") s"
        echo "QEMU start -> kube-proxy serves 10.0.0.1:443: $(secs "$t_qemu" "$svc") s"
        [[ -n "$ds" ]] && echo "DaemonSet applied -> 1/1 Ready: $(secs "$t_ds" "$ds") s"
        grep -m 5 -E '^RN ' "$run/console.log" || true
    } | tee "$run/timeline.txt"
    exit 0
fi

# ------------------------------------------------------------ phase 1 (host side)
for tool in qemu-system-x86_64 skopeo openssl bc ip; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
mkdir -p "$run" "$share/logs" "$share/manifests" "$share/cni/net.d"
eval "$(bash "$here/build.sh" | grep -E '^[A-Z_]+=')"
cp_bin="$(bash "$repo/hack/controlplane/build.sh" --print-bin-dir)"
[[ -x "$cp_bin/kube-apiserver" ]] || die "no control plane in $cp_bin: run hack/controlplane/build.sh"
kdir="$(bash "$repo/tests/vm/fetch-kernel.sh" | tail -1)"

# Everything the initramfs gets besides the binaries make-initramfs.sh copies
# (with their ldd libraries): our /init, the CNI plugins, iptables' dlopen'ed
# xtables extensions and their libraries, the iptables names.
extra="$run/extra"
rm -rf "$extra" && mkdir -p "$extra/opt/cni/bin" "$extra/usr/lib/x86_64-linux-gnu/xtables" "$extra/lib/x86_64-linux-gnu" "$extra/sbin"
cp "$here/guest/init" "$extra/init"
for p in bridge host-local loopback portmap; do cp "$CNI_BIN/$p" "$extra/opt/cni/bin/"; done
cp /usr/lib/x86_64-linux-gnu/xtables/*.so "$extra/usr/lib/x86_64-linux-gnu/xtables/"
for l in libnetfilter_conntrack.so.3 libnfnetlink.so.0 libm.so.6; do cp -L "/lib/x86_64-linux-gnu/$l" "$extra/lib/x86_64-linux-gnu/"; done
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s /bin/xtables-nft-multi "$extra/sbin/$n"
done
# Own cache root for the ~190 MB initramfs: make-initramfs.sh keeps only the
# newest 8 images of its cache dir, which must not evict the tests' images.
initrd="$(KMM_CACHE="$HOME/.cache/kmm-rs/realnode" KMM_VM_KERNEL_DIR="$kdir" EXTRA_DIR="$extra" \
    MODULES="loop dummy brd overlay bridge veth br_netfilter nf_tables nft_compat nft_chain_nat xt_MASQUERADE xt_nat xt_comment xt_tcpudp xt_addrtype xt_conntrack xt_mark xt_statistic" \
    nice -n 19 bash "$repo/tests/vm/make-initramfs.sh" "$KUBELET" "$(command -v containerd)" \
    "$(command -v containerd-shim-runc-v2)" "$(command -v runc)" "$(command -v ctr)" "$(readlink -f "$(command -v xtables-nft-multi)")" | tail -1)"

# The 9p share: guest script and configs (no initramfs rebuild when they change).
reg="127.0.0.1:$KMM_REGISTRY_PORT"
cp "$here/guest/join.sh" "$share/join.sh"
# kube-proxy from the share, not the initramfs (one exec; the initramfs stays
# smaller and boots sooner).
mkdir -p "$share/bin" && cp "$KUBE_PROXY" "$share/bin/kube-proxy"
printf 'API_PORT=%s\nNODE_IP=192.168.77.2\nTAP_MAC=52:54:00:77:00:02\n' "$KMM_APISERVER_PORT" >"$share/env"
cp "$here/guest/kubelet.yaml" "$share/kubelet.yaml"
sed "s#@REGISTRY@#$reg#g" "$here/guest/containerd.toml" >"$share/containerd.toml"
cp "$here/guest/bridge.conflist" "$share/cni/net.d/10-bridge.conflist"
# Image names keep the registry's local name; containerd in the guest pulls
# them from the same registry at 10.0.2.2 (QEMU's alias for our loopback).
mkdir -p "$share/certs.d/$reg"
printf 'server = "http://10.0.2.2:%s"\n[host."http://10.0.2.2:%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$KMM_REGISTRY_PORT" "$KMM_REGISTRY_PORT" >"$share/certs.d/$reg/hosts.toml"
sed "s#@REGISTRY@#$reg#g" "$here/guest/static-pod.yaml" >"$share/manifests/pause.yaml"
cat >"$run/paths" <<P
CP_BIN=$cp_bin
KDIR=$kdir
INITRD=$initrd
PAUSE_OCI=$PAUSE_OCI
P

# ------------------------------------------------------------ phase 2
if ! ip netns list | grep -qw "$KMM_RN_NETNS"; then ip netns add "$KMM_RN_NETNS"; fi
ip netns exec "$KMM_RN_NETNS" ip link set lo up
log "entering network namespace $KMM_RN_NETNS (loopback only)"
exec ip netns exec "$KMM_RN_NETNS" bash "${BASH_SOURCE[0]}" --in-netns
