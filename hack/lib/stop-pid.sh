# shellcheck shell=bash
# stop_pid NAME PIDFILE MATCH: stop the process recorded in PIDFILE, but only
# if it still runs the binary NAME with MATCH on its command line (guards
# against pid reuse and against another run dir's daemons): SIGTERM, up to
# 10 s, then SIGKILL. The pid file is removed either way. Source it; do not run it.
# Callers define log().
stop_pid() {
    local name="$1" pidfile="$2" match="$3" pid exe cmdline
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ && "$(basename "${exe:-none}")" == "$name" && "$cmdline" == *"$match"* ]]; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not exit on SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        log "$name (pid $pid) is not running (or not ours)"
    fi
    rm -f "$pidfile"
}
