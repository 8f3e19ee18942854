#!/usr/bin/env bash
# Debian's prometheus, inside the real-node namespace, scraping the kmm-rs
# Pods over the tap (Pod IPs are routed into the guest). Debian builds
# prometheus 2.42 WITHOUT kubernetes_sd_configs ("field kubernetes_sd_configs
# not found"), so discovery is done here the way deploy/overlays/monitoring's
# ServiceMonitors select targets (EndpointSlices of the kmm-system Services
# labelled app.kubernetes.io/name + component, port `metrics`) and written to
# file_sd files; rerun this script to refresh them. Checks up == 1 for every
# target and prints the kmm_agent_modules_loaded series. Stopped by stop.sh.
# Env: KMM_PROM_PORT (29090).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export KMM_RUN="${KMM_RUN:-/tmp/kmm-realnode}"
export KMM_RN_NETNS="${KMM_RN_NETNS:-kmm-realnode}"
port="${KMM_PROM_PORT:-29090}"
run="$KMM_RUN"
log() { printf '[realnode/prometheus %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
command -v prometheus >/dev/null || die "prometheus not installed (apt-get install prometheus)"
if [[ "$(ip netns identify $$)" != "$KMM_RN_NETNS" ]]; then
    exec ip netns exec "$KMM_RN_NETNS" bash "${BASH_SOURCE[0]}" "$@"
fi

mkdir -p "$run/prometheus/data"
# shellcheck disable=SC1091
source "$run/paths"
k() { "$CP_BIN/kubectl" --kubeconfig "$run/admin.kubeconfig" "$@"; }
# discover NAME COMPONENT: file_sd targets (ready endpoints, port `metrics`) of
# the Services a ServiceMonitor with that selector would pick.
discover() {
    k -n kmm-system get endpointslices -l "app.kubernetes.io/name=$1" -o json | python3 -c '
import json, sys
name, comp = sys.argv[1], sys.argv[2]
out = []
for s in json.load(sys.stdin)["items"]:
    port = [p["port"] for p in s.get("ports") or [] if p.get("name") == "metrics"]
    if not port:
        continue
    for e in s.get("endpoints") or []:
        if not e.get("conditions", {}).get("ready"):
            continue
        for a in e["addresses"]:
            out.append({"targets": ["%s:%d" % (a, port[0])],
                        "labels": {"pod": e.get("targetRef", {}).get("name", ""), "node": e.get("nodeName", ""),
                                   "service": s["metadata"]["labels"].get("kubernetes.io/service-name", "")}})
print(json.dumps(out))' "$1" "$2" >"$run/prometheus/$1.json.tmp"
    mv "$run/prometheus/$1.json.tmp" "$run/prometheus/$1.json"
}
discover kmm-agent agent
discover kmm-controller controller
job() {  # NAME
    cat <<J
- job_name: serviceMonitor/kmm-system/$1/0
  scrape_interval: 5s
  metrics_path: /metrics
  file_sd_configs: [{files: ["$run/prometheus/$1.json"], refresh_interval: 5s}]
J
}
{ echo "scrape_configs:"; job kmm-agent; job kmm-controller; } >"$run/prometheus/prometheus.yml"
promtool check config "$run/prometheus/prometheus.yml" >&2

if ! { [[ -f "$run/prometheus.pid" ]] && kill -0 "$(cat "$run/prometheus.pid")" 2>/dev/null; }; then
    setsid prometheus --config.file="$run/prometheus/prometheus.yml" --storage.tsdb.path="$run/prometheus/data" \
        --web.listen-address="127.0.0.1:$port" </dev/null >"$run/prometheus/prometheus.log" 2>&1 &
    echo $! >"$run/prometheus.pid"
fi
q() { curl -fsS --max-time 5 "http://127.0.0.1:$port/api/v1/query" --data-urlencode "query=$1"; }
t0=$SECONDS
# 3 targets (1 agent, 2 controllers), all up.
count_up() { q 'count(up == 1)' | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)'; }
until [[ "$(count_up 2>/dev/null)" == 3 ]]; do
    ((SECONDS - t0 < 120)) || { q up >&2 || true; die "not 3 targets up after 120 s"; }
    sleep 2
done
log "all 3 targets up after $((SECONDS - t0)) s"
q 'up' | python3 -c 'import json,sys; [print("up", r["metric"]["job"], r["metric"].get("pod"), r["metric"].get("node"), r["value"][1]) for r in json.load(sys.stdin)["data"]["result"]]'
q 'kmm_agent_modules_loaded' | python3 -c 'import json,sys; [print("kmm_agent_modules_loaded", r["metric"], r["value"][1]) for r in json.load(sys.stdin)["data"]["result"]]'
