#!/bin/sh
# Runs in the guest (from /init): prepare cgroup v2, netfilter and the kubelet's
# directories, then start containerd, kubelet, which joins the control plane
# as node kmm-guest, and kube-proxy. Config comes from /host (written by hack/realnode/start.sh);
# logs go to /host/logs so the host can read them while the guest runs.
t() { cut -d' ' -f1 /proc/uptime; }
set -u
. /host/env    # API_PORT (the API server's port on 10.0.2.2), NODE_IP, TAP_MAC
mkdir -p /var/lib/kubelet /var/log/pods /run/xtables /tmp/ctd /host/logs
cat /proc/sys/kernel/random/uuid | tr -d - > /etc/machine-id   # cadvisor wants one
for m in overlay bridge veth br_netfilter nf_tables nft_compat nft_chain_nat xt_MASQUERADE xt_nat \
         xt_comment xt_tcpudp xt_addrtype xt_conntrack xt_mark xt_statistic; do
  /sbin/modprobe $m || echo "RN modprobe $m failed"
done
# cgroup v2 with every controller delegated to the root's children (kubelet's cgroupfs driver).
mount -t cgroup2 none /sys/fs/cgroup
echo "+cpu +memory +pids +cpuset +io" > /sys/fs/cgroup/cgroup.subtree_control
echo 1 > /proc/sys/net/ipv4/ip_forward
# The second NIC: a tap in the host's network namespace, the API server's way
# to the kubelet and to Pod IPs (it routes 10.245.0.0/24 via NODE_IP).
for d in /sys/class/net/*; do
  if [ "$(cat "$d/address")" = "$TAP_MAC" ]; then
    ip link set "${d##*/}" up && ip addr add "$NODE_IP/30" dev "${d##*/}" || echo "RN tap setup failed"
  fi
done
echo "RN setup done t=$(t)"
containerd --config /host/containerd.toml > /host/logs/containerd.log 2>&1 &
while [ ! -S /run/ctd/containerd.sock ]; do sleep 0.2; done
echo "RN containerd up t=$(t)"
kubelet --config /host/kubelet.yaml --kubeconfig /host/kubelet.kubeconfig --hostname-override kmm-guest \
  --node-ip $NODE_IP --root-dir /var/lib/kubelet --v=1 > /host/logs/kubelet.log 2>&1 &
echo "RN kubelet started t=$(t)"
# Services (the Pods' way to the API server: 10.0.0.1:443, whose endpoint
# start.sh wrote) through kube-proxy, iptables mode (iptables-nft).
/host/bin/kube-proxy --kubeconfig /host/kube-proxy.kubeconfig --hostname-override kmm-guest \
  --proxy-mode iptables --cluster-cidr 10.245.0.0/24 --conntrack-max-per-core 0 --v=1 \
  > /host/logs/kube-proxy.log 2>&1 &
echo "RN kube-proxy started t=$(t)"
# Command channel over the share (hack/realnode/guest-exec.sh): run each
# /host/cmd/<id>.sh once, leave <id>.out and then <id>.rc. A status line every 30 s.
mkdir -p /host/cmd
n=0
while :; do
  for f in /host/cmd/*.sh; do
    [ -e "$f" ] || continue
    id=${f%.sh}
    mv "$f" "$id.run"
    sh "$id.run" > "$id.out" 2>&1 < /dev/null
    echo $? > "$id.rc.tmp" && mv "$id.rc.tmp" "$id.rc"
    rm -f "$id.run"
  done
  n=$((n+1))
  if [ $((n % 60)) = 0 ]; then
    echo "RN t=$(t) running=$(ctr -a /run/ctd/containerd.sock -n k8s.io task ls 2>/dev/null | grep -c RUNNING) mem=$(free -m | awk '/Mem/{print $3}')MB"
  fi
  sleep 0.5
done
