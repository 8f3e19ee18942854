#!/usr/bin/env bash
# Run a shell command in the real-node guest (busybox sh, as root) through the
# 9p share and print its output; exits with its exit code. Needs no network.
#   hack/realnode/guest-exec.sh 'cat /proc/modules'
set -euo pipefail
share="${KMM_RUN:-/tmp/kmm-realnode}/share"
[[ -d "$share/cmd" ]] || { echo "no $share/cmd: is the guest up (hack/realnode/start.sh)?" >&2; exit 1; }
id="$share/cmd/$$-$RANDOM"
printf '%s\n' "$*" >"$id.tmp" && mv "$id.tmp" "$id.sh"   # rename: the guest never sees half a script
for _ in $(seq 1 "${TIMEOUT:-120}0"); do
    if [[ -f "$id.rc" ]]; then
        cat "$id.out"; rc="$(cat "$id.rc")"; rm -f "$id.out" "$id.rc"; exit "$rc"
    fi
    sleep 0.1
done
echo "guest-exec: no answer after ${TIMEOUT:-120}s" >&2
exit 124
