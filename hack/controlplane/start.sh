#!/usr/bin/env bash
# Start a real, local Kubernetes control plane for tests: etcd + kube-apiserver
# (TLS, RBAC, PodSecurity, ValidatingAdmissionPolicy, service-account tokens),
# optionally kube-controller-manager + kube-scheduler. Everything listens on
# 127.0.0.1 only; a QEMU guest with user networking reaches it at 10.0.2.2,
# which is in the serving certificate.
#
# Idempotent: a healthy control plane already started from $KMM_RUN is reused.
# Concurrent invocations serialize on a lock file in $KMM_RUN.
# Binaries come from hack/controlplane/build.sh (not built here: run it first).
#
# Environment:
#   KMM_RUN               run dir: certs, kubeconfigs, etcd data, logs, pid files
#                         (default: /tmp/kmm-rs-cp)
#   KMM_CACHE, KMM_CP_BIN where the binaries are (see build.sh / lib.sh)
#   KMM_APISERVER_PORT    kube-apiserver secure port (default: 6443)
#   KMM_ETCD_PORT         etcd client port (default: 23790)
#   KMM_ETCD_PEER_PORT    etcd peer port (default: 23800)
#   KMM_KCM_PORT          kube-controller-manager secure port (default: 10257)
#   KMM_SCHEDULER_PORT    kube-scheduler secure port (default: 10259)
#   START_CONTROLLERS=1   also start kube-controller-manager and kube-scheduler
#   KMM_NODE_MONITOR_GRACE  how long a Node may go without a heartbeat (or, new,
#                         without a first one) before it is marked unreachable
#                         and tainted (default 8760h: the
#                         tests' and demo's simulated Nodes have no kubelet, and
#                         an untolerated taint keeps new loads off a node; a real
#                         kubelet's Ready=False still taints it at once)
#   KMM_APISERVER_EXTRA_ARGS  extra kube-apiserver flags, split on spaces (e.g. the
#                         kubelet client certificate for a real node: hack/realnode)
#   KMM_CP_TIMEOUT        seconds to wait for each component (default: 120)
#
# Outputs in $KMM_RUN:
#   admin.kubeconfig        cluster-admin (group system:masters), server https://127.0.0.1:PORT
#   admin-guest.kubeconfig  the same credentials, server https://10.0.2.2:PORT (for QEMU guests)
#   pki/ca.crt              cluster CA;  pki/sa.{key,pub} service-account signing pair
#   logs/<component>.log, <component>.pid
#   logs/audit.log          API server audit log: every read and write, Metadata level (audit-policy.yaml)
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run="${KMM_RUN:-/tmp/kmm-rs-cp}"
api_port="${KMM_APISERVER_PORT:-6443}"
etcd_port="${KMM_ETCD_PORT:-23790}"
etcd_peer_port="${KMM_ETCD_PEER_PORT:-23800}"
kcm_port="${KMM_KCM_PORT:-10257}"
sched_port="${KMM_SCHEDULER_PORT:-10259}"
timeout="${KMM_CP_TIMEOUT:-120}"
pki="$run/pki"
logs="$run/logs"

log() { printf '[controlplane/start %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if ! cp_all_present; then
    die "control-plane binaries not found in $cp_bin; run: bash hack/controlplane/build.sh"
fi
for tool in openssl curl flock setsid; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install openssl curl util-linux)"
done

mkdir -p "$run" "$pki" "$logs"
chmod 700 "$run"
# Serialize concurrent starts (several test processes may race here). The
# daemons are started with fd 9 closed so they do not keep holding the lock.
exec 9>"$run/start.lock"
flock 9

# ---------------------------------------------------------------- processes

# pid_alive NAME: the pid file names a live process running our binary NAME
# with this run dir on its command line (guards against pid reuse after a
# reboot or a crash, and against another run dir's daemons).
pid_alive() {
    local name="$1" pidfile="$run/$1.pid" pid exe
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
    exe="${exe% (deleted)}"
    [[ "$(basename "$exe")" == "$name" ]] || return 1
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$run/"* ]]
}

# pid_running NAME: the recorded pid is alive (right after launch it may still
# be exec'ing through setsid, so the binary name is not checked here).
pid_running() {
    local pid
    pid="$(cat "$run/$1.pid" 2>/dev/null)" && [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# require_free NAME PORT...: fail early when a port is taken (e.g. by another
# run dir's control plane), rather than health-checking someone else's daemon.
require_free() {
    local name="$1" port
    shift
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "cannot start $name: 127.0.0.1:$port is already in use (set KMM_*_PORT, or stop the other control plane)"
        fi
    done
}

# launch NAME ARGS...: start a daemon detached from this shell (own session,
# no inherited stdio or lock fd) and record its pid.
launch() {
    local name="$1"
    shift
    log "starting $name (log: $logs/$name.log)"
    setsid "$cp_bin/$name" "$@" </dev/null >>"$logs/$name.log" 2>&1 9>&- &
    echo $! >"$run/$name.pid"
}

# wait_for NAME CMD...: poll CMD until it succeeds, the daemon dies, or timeout.
wait_for() {
    local name="$1" deadline=$((SECONDS + timeout))
    shift
    until "$@" >/dev/null 2>&1; do
        if ! pid_running "$name"; then
            tail -n 30 "$logs/$name.log" >&2 || true
            die "$name exited; see $logs/$name.log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$logs/$name.log" >&2 || true
            die "$name not ready after ${timeout}s; see $logs/$name.log"
        fi
        sleep 0.5
    done
    log "$name is ready"
}

# ---------------------------------------------------------------- PKI

# All keys and certs are made once per run dir and reused afterwards, so a
# restart keeps the etcd data and issued service-account tokens valid.
ossl() { openssl "$@" 2>>"$logs/openssl.log"; }

# make_ca NAME CN: a self-signed CA in $pki/NAME.{crt,key}.
make_ca() {
    local name="$1" cn="$2"
    [[ -f "$pki/$name.crt" ]] && return 0
    log "generating $name"
    ossl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout "$pki/$name.key" -out "$pki/$name.crt" -subj "/CN=$cn" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
}

# issue NAME SUBJECT EXTKEYUSAGE [SAN] [CA]: a leaf cert signed by CA (default: ca).
issue() {
    local name="$1" subj="$2" eku="$3" san="${4:-}" ca="${5:-ca}"
    [[ -f "$pki/$name.crt" ]] && return 0
    log "issuing $name certificate ($subj)"
    local ext="$pki/$name.ext"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        if [[ -n "$san" ]]; then echo "subjectAltName=$san"; fi
    } >"$ext"
    ossl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" \
        -out "$pki/$name.csr" -subj "$subj"
    ossl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
        -CAcreateserial -sha256 -days 3650 -extfile "$ext" -out "$pki/$name.crt"
    rm -f "$pki/$name.csr" "$ext"
}

make_pki() {
    make_ca ca kmm-rs-test-ca
    # Front-proxy (requestheader) CA, as kubeadm sets up: the API server
    # publishes it in kube-system/extension-apiserver-authentication, which
    # the controller-manager and scheduler read for their own authentication.
    make_ca front-proxy-ca kmm-rs-test-front-proxy-ca
    issue front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
    # 10.0.0.1 is the `kubernetes` Service IP (first of --service-cluster-ip-range).
    issue apiserver "/CN=kube-apiserver" serverAuth \
        "IP:127.0.0.1,IP:10.0.2.2,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin "/O=system:masters/CN=kmm-admin" clientAuth
    issue controller-manager "/CN=system:kube-controller-manager" clientAuth
    issue scheduler "/CN=system:kube-scheduler" clientAuth
    if [[ ! -f "$pki/sa.key" ]]; then
        log "generating service-account signing key pair"
        ossl genrsa -out "$pki/sa.key" 2048
        ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
    fi
    chmod 600 "$pki"/*.key
}

# kubeconfig FILE SERVER CERTNAME USER: embed CA and client cert/key so the
# file stays valid when copied elsewhere (e.g. into a VM).
kubeconfig() {
    local file="$1" server="$2" cert="$3" user="$4"
    b64() { base64 -w0 <"$1"; }
    umask 077
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kmm-rs
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$pki/$cert.crt")
    client-key-data: $(b64 "$pki/$cert.key")
contexts:
- name: $user@kmm-rs
  context:
    cluster: kmm-rs
    user: $user
current-context: $user@kmm-rs
EOF
    mv "$file.tmp" "$file"
}

# ---------------------------------------------------------------- components

api_url="https://127.0.0.1:$api_port"
etcd_url="http://127.0.0.1:$etcd_port"

etcd_healthy() { curl -fsS --max-time 2 "$etcd_url/health" | grep -q '"health":"true"'; }
api_ready() {
    curl -fsS --max-time 3 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "$api_url/readyz" | grep -qx ok
}
# kube-controller-manager/kube-scheduler allow /healthz without authentication.
secure_healthz() { curl -fsSk --max-time 2 "https://127.0.0.1:$1/healthz" | grep -qx ok; }

start_etcd() {
    if pid_alive etcd; then
        wait_for etcd etcd_healthy
        return 0
    fi
    # --unsafe-no-fsync: test data only, and fsync dominates etcd latency on CI disks.
    require_free etcd "$etcd_port" "$etcd_peer_port"
    launch etcd \
        --name kmm-rs \
        --data-dir "$run/etcd" \
        --listen-client-urls "$etcd_url" \
        --advertise-client-urls "$etcd_url" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
        --initial-cluster "kmm-rs=http://127.0.0.1:$etcd_peer_port" \
        --unsafe-no-fsync \
        --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) \
        --log-level warn
    wait_for etcd etcd_healthy
}

start_apiserver() {
    if pid_alive kube-apiserver; then
        wait_for kube-apiserver api_ready
        return 0
    fi
    # --endpoint-reconciler-type=none: the `kubernetes` Service cannot have a
    # loopback endpoint, and nothing in-cluster needs one (there is no kubelet).
    # Admission: the default set (NamespaceLifecycle, LimitRanger, ServiceAccount,
    # ResourceQuota, webhooks, PodSecurity, ValidatingAdmissionPolicy, ...) is
    # on regardless; list the ones the tests rely on explicitly, plus
    # NodeRestriction which is off by default.
    require_free kube-apiserver "$api_port"
    # The audit log counts what each client writes and reads (tests check
    # kmm-rs's budgets from it by User-Agent; the fleet benchmark counts every
    # client): policy in audit-policy.yaml, large enough not to rotate mid-run.
    cp "$(dirname "${BASH_SOURCE[0]}")/audit-policy.yaml" "$run/audit-policy.yaml"
    # shellcheck disable=SC2086 # KMM_APISERVER_EXTRA_ARGS is split on purpose
    launch kube-apiserver \
        --audit-policy-file="$run/audit-policy.yaml" \
        --audit-log-path="$logs/audit.log" \
        --audit-log-format=json \
        --audit-log-maxsize="${KMM_AUDIT_LOG_MAXSIZE_MB:-4096}" \
        --audit-log-maxbackup=1 \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$api_port" \
        --etcd-servers="$etcd_url" \
        --cert-dir="$run/apiserver-certs" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --endpoint-reconciler-type=none \
        --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User \
        --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --proxy-client-cert-file="$pki/front-proxy-client.crt" \
        --proxy-client-key-file="$pki/front-proxy-client.key" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,PodSecurity,ValidatingAdmissionPolicy,NodeRestriction \
        --allow-privileged=true \
        --profiling=false \
        --v=1 \
        ${KMM_APISERVER_EXTRA_ARGS:-}
    wait_for kube-apiserver api_ready
}

start_controller_manager() {
    if pid_alive kube-controller-manager; then
        wait_for kube-controller-manager secure_healthz "$kcm_port"
        return 0
    fi
    kubeconfig "$run/controller-manager.kubeconfig" "$api_url" controller-manager system:kube-controller-manager
    local kc="$run/controller-manager.kubeconfig"
    require_free kube-controller-manager "$kcm_port"
    launch kube-controller-manager \
        --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" \
        --authorization-kubeconfig="$kc" \
        --bind-address=127.0.0.1 \
        --secure-port="$kcm_port" \
        --cert-dir="$run/controller-manager-certs" \
        --leader-elect=false \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$pki/sa.key" \
        --root-ca-file="$pki/ca.crt" \
        --cluster-signing-cert-file="$pki/ca.crt" \
        --cluster-signing-key-file="$pki/ca.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --node-monitor-grace-period="${KMM_NODE_MONITOR_GRACE:-8760h}" \
        --node-startup-grace-period="${KMM_NODE_MONITOR_GRACE:-8760h}" \
        --v=1
    wait_for kube-controller-manager secure_healthz "$kcm_port"
}

start_scheduler() {
    if pid_alive kube-scheduler; then
        wait_for kube-scheduler secure_healthz "$sched_port"
        return 0
    fi
    kubeconfig "$run/scheduler.kubeconfig" "$api_url" scheduler system:kube-scheduler
    local kc="$run/scheduler.kubeconfig"
    require_free kube-scheduler "$sched_port"
    launch kube-scheduler \
        --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" \
        --authorization-kubeconfig="$kc" \
        --bind-address=127.0.0.1 \
        --secure-port="$sched_port" \
        --cert-dir="$run/scheduler-certs" \
        --leader-elect=false \
        --v=1
    wait_for kube-scheduler secure_healthz "$sched_port"
}

make_pki
kubeconfig "$run/admin.kubeconfig" "$api_url" admin kmm-admin
kubeconfig "$run/admin-guest.kubeconfig" "https://10.0.2.2:$api_port" admin kmm-admin
start_etcd
start_apiserver
if [[ "${START_CONTROLLERS:-0}" == 1 ]]; then
    start_controller_manager
    start_scheduler
fi
log "control plane up: $api_url (kubernetes $cp_k8s_version, etcd $cp_etcd_version)"
log "export KUBECONFIG=$run/admin.kubeconfig"
