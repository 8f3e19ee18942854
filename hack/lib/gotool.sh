# shellcheck shell=bash
# Build one Go command from a pinned wrapper module (go.mod + go.sum committed
# beside the caller) through the Go module proxy, cached behind a stamp file.
# No prebuilt binaries are downloaded. Source it; do not run it. Used by
# hack/kwok/build.sh and hack/helm/build.sh.
#
# gotool_version MOD_DIR MODULE
#   prints MODULE's pinned version from MOD_DIR/go.mod (`require mod vX` or a
#   `mod vX` line inside a require block); fails naming the file if absent.
#
# gotool_build NAME VERSION MOD_DIR BIN_DIR PACKAGE CALLER COLD_ESTIMATE [VERSION_ARG...]
#   builds PACKAGE into BIN_DIR/NAME unless BIN_DIR/../stamp matches (FORCE=1
#   rebuilds) and prints BIN_DIR last. The stamp covers everything that changes
#   the binary: go.mod, go.sum, the CALLER script, this file and the Go
#   toolchain. VERSION_ARGS (e.g. --version) are run on the new binary for the
#   log line. GOTOOL_LDFLAGS (e.g. `-X pkg.version=v1.2.3`, what an upstream
#   Makefile injects) is added to the linker flags. GOFLAGS, GOPROXY,
#   GOMODCACHE, GOCACHE are honoured by `go`.

gotool_lib="${BASH_SOURCE[0]}"

gotool_version() {
    local mod_dir="$1" module="$2" version
    version="$(awk -v m="$module" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m { print $2; exit }' "$mod_dir/go.mod")"
    if [[ -z "$version" ]]; then
        echo "cannot read the pinned $module version from $mod_dir/go.mod" >&2
        return 1
    fi
    echo "$version"
}

gotool_build() {
    local name="$1" version="$2" mod_dir="$3" bin_dir="$4" package="$5" caller="$6" estimate="$7"
    shift 7
    local stamp="$bin_dir/../stamp" want start
    _gotool_log() { printf '[%s/build %s] %s\n' "$name" "$(date -u +%H:%M:%S)" "$*" >&2; }

    command -v go >/dev/null || { _gotool_log "go is not installed (need Go >= 1.24)"; return 1; }
    want="$(
        {
            cat "$mod_dir/go.mod" "$mod_dir/go.sum" "$caller" "$gotool_lib"
            go env GOVERSION GOOS GOARCH
        } | sha256sum | cut -d' ' -f1
    )"
    if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$bin_dir/$name" ]]; then
        _gotool_log "up to date: $name $version"
        echo "$bin_dir"
        return 0
    fi

    mkdir -p "$bin_dir"
    rm -f "$stamp"
    start=$(date +%s)
    _gotool_log "building $name $version into $bin_dir ($estimate cold on 2 cores)"
    (
        cd "$mod_dir"
        export GOWORK=off CGO_ENABLED=0
        # -mod=readonly: the committed go.sum must already cover the build;
        # -buildvcs=false: the wrapper module lives in our repo, whose VCS
        # state is not the tool's (and git may refuse to report it on CI
        # checkouts).
        go build -mod=readonly -buildvcs=false -trimpath -ldflags "-s -w ${GOTOOL_LDFLAGS:-}" -o "$bin_dir/$name" "$package"
    ) || return 1
    [[ -x "$bin_dir/$name" ]] || { _gotool_log "build finished but $bin_dir/$name is missing"; return 1; }

    echo "$want" >"$stamp"
    _gotool_log "built in $(($(date +%s) - start))s: $("$bin_dir/$name" "$@" 2>&1 | sed -n 1p)"
    echo "$bin_dir"
}
