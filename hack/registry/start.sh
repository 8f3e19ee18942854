#!/usr/bin/env bash
# Start Debian's docker-registry (apt: docker-registry) on 127.0.0.1, plain HTTP.
#   hack/registry/start.sh            no auth, port ${KMM_REGISTRY_PORT:-5000}
#   hack/registry/start.sh --auth     htpasswd auth, port ${KMM_REGISTRY_AUTH_PORT:-5001},
#                                     user ${KMM_REGISTRY_USER:-kmm} / ${KMM_REGISTRY_PASSWORD:-kmm-secret}
#   hack/registry/start.sh --tls      HTTPS with a self-signed certificate (openssl), no auth,
#                                     port ${KMM_REGISTRY_TLS_PORT:-5002}
# Storage, config, log and PID file under ${KMM_RUN:-/tmp/kmm-rs-cp}/registry[-auth|-tls]/.
# Idempotent: exits 0 at once if that instance is already up. Deletes are enabled.
# Stop with hack/registry/stop.sh [--auth].
set -euo pipefail

AUTH=0
TLS=0
if [ "${1:-}" = "--auth" ]; then AUTH=1; fi
if [ "${1:-}" = "--tls" ]; then TLS=1; fi
RUN="${KMM_RUN:-/tmp/kmm-rs-cp}"
SCHEME=http
if [ "$AUTH" = 1 ]; then
    PORT="${KMM_REGISTRY_AUTH_PORT:-5001}"
    DIR="$RUN/registry-auth"
elif [ "$TLS" = 1 ]; then
    PORT="${KMM_REGISTRY_TLS_PORT:-5002}"
    DIR="$RUN/registry-tls"
    SCHEME=https
else
    PORT="${KMM_REGISTRY_PORT:-5000}"
    DIR="$RUN/registry"
fi
PIDFILE="$DIR/registry.pid"
URL="$SCHEME://127.0.0.1:$PORT/v2/"

command -v docker-registry >/dev/null || { echo "docker-registry not installed (apt-get install docker-registry)" >&2; exit 1; }

# 200 without auth, 401 with auth: either means a registry answers.
status() { curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$URL" 2>/dev/null || true; }

if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    case "$(status)" in 200|401) echo "registry already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; exit 0;; esac
fi
case "$(status)" in
    200|401) echo "a registry already listens on 127.0.0.1:$PORT (not started by this script)"; exit 0;;
esac

mkdir -p "$DIR/storage"
AUTH_YAML=""
if [ "$AUTH" = 1 ]; then
    command -v htpasswd >/dev/null || { echo "htpasswd not installed (apt-get install apache2-utils)" >&2; exit 1; }
    htpasswd -Bbn "${KMM_REGISTRY_USER:-kmm}" "${KMM_REGISTRY_PASSWORD:-kmm-secret}" > "$DIR/htpasswd"
    AUTH_YAML="auth:
  htpasswd:
    realm: kmm-rs-test
    path: $DIR/htpasswd"
fi
if [ "$TLS" = 1 ]; then
    command -v openssl >/dev/null || { echo "openssl not installed (apt-get install openssl)" >&2; exit 1; }
    if [ ! -f "$DIR/tls.crt" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kmm-rs-test-registry" \
            -addext "subjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost" \
            -keyout "$DIR/tls.key" -out "$DIR/tls.crt" 2>/dev/null
    fi
    AUTH_YAML="  tls:
    certificate: $DIR/tls.crt
    key: $DIR/tls.key"
fi
# The packaged /etc/docker/registry/config.yml listens on all addresses and
# points htpasswd at a directory, so write our own.
cat > "$DIR/config.yml" <<YML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$PORT
  headers:
    X-Content-Type-Options: [nosniff]
$AUTH_YAML
YML

# setsid: its own session, so the registry outlives the process group of
# whoever started it first (a test process, a shell job), like the control plane.
setsid nohup docker-registry serve "$DIR/config.yml" > "$DIR/registry.log" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
for _ in $(seq 1 100); do
    case "$(status)" in
        200|401) echo "registry up on $SCHEME://127.0.0.1:$PORT (pid $(cat "$PIDFILE"), auth=$AUTH)"; exit 0;;
    esac
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
    sleep 0.1
done
echo "registry on 127.0.0.1:$PORT did not come up; log:" >&2
cat "$DIR/registry.log" >&2
exit 1
