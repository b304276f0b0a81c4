# Sourced by scripts/test: build the packages the e2e layer installs in the background, while lint,
# unit and integration run on the other core, and hand them over through RQWS_E2E_DEB_<RELEASE>.
# tests/e2e/conftest.py waits while <deb>.building exists; a failed build leaves <deb>.log, which
# the test's error and finish_e2e_debs both show. The Cockpit page's package is linked beside each as
# cockpit-rq-worker-service_<release>.deb (tests/e2e/conftest.py's cockpit_deb finds it there).

E2E_DEBS_DIR=build/e2e-debs
E2E_DEBS_PID=""
E2E_DEBS_RELEASES=()

# e2e_selected ARG...: whether pytest with these arguments may run tests/e2e (no path given: the
# default test paths, which include it; or a path inside tests/e2e or above it).
e2e_selected() {
    local arg path given=0 e2e
    e2e=$(realpath tests/e2e)
    for arg in "$@"; do
        path=${arg%%::*}
        [ -e "$path" ] || continue
        given=1
        path=$(realpath "$path")
        case "$path/" in "$e2e/"*) return 0 ;; esac
        case "$e2e/" in "$path/"*) return 0 ;; esac
    done
    [ "$given" -eq 0 ]
}

# start_e2e_debs ARG...: start building each release's package (RQWS_E2E_RELEASES, default both)
# unless one is named already; only as root (the e2e layer skips otherwise) and when e2e may run.
start_e2e_debs() {
    [ "$(id -u)" -eq 0 ] && e2e_selected "$@" || return 0
    local release var
    rm -rf "$E2E_DEBS_DIR"
    mkdir -p "$E2E_DEBS_DIR"
    for release in ${RQWS_E2E_RELEASES:-bookworm trixie}; do
        var=RQWS_E2E_DEB_${release^^}
        [ -z "${!var:-}" ] || continue
        E2E_DEBS_RELEASES+=("$release")
        export "$var=$PWD/$E2E_DEBS_DIR/rq-worker-service_$release.deb"
        touch "${!var}.building"
    done
    [ ${#E2E_DEBS_RELEASES[@]} -gt 0 ] || return 0
    echo "Building the e2e packages in the background (${E2E_DEBS_RELEASES[*]}), log in $E2E_DEBS_DIR/"
    # One after the other (build-deb stages in one directory), niced: the tests keep their core.
    setsid nice -n 10 bash -c '
        for release in "$@"; do
            target='"$PWD/$E2E_DEBS_DIR"'/rq-worker-service_$release.deb
            if packaging/build-deb --release "$release" >"$target.log" 2>&1 \
                && built=$(tail -n 1 "$target.log") && [ -f "$built" ]; then
                # The Cockpit page, the line before: beside the main one under the same pattern.
                page=$(tail -n 2 "$target.log" | head -n 1)
                [ ! -f "$page" ] || ln -f "$page" "$(dirname "$target")/cockpit-$(basename "$target")"
                ln -f "$built" "$target"
            fi
            rm -f "$target.building"
        done' build-e2e-debs "${E2E_DEBS_RELEASES[@]}" </dev/null &
    E2E_DEBS_PID=$!
    trap stop_e2e_debs EXIT
}

# stop_e2e_debs: end a build still running (pytest is done, or the run failed before it).
stop_e2e_debs() {
    if [ -n "$E2E_DEBS_PID" ] && kill -0 "$E2E_DEBS_PID" 2>/dev/null; then
        kill -- "-$E2E_DEBS_PID" 2>/dev/null || true
        wait "$E2E_DEBS_PID" 2>/dev/null || true
    fi
    E2E_DEBS_PID=""
}

# finish_e2e_debs: after pytest, fail (with the build's output) if a package that was started failed.
finish_e2e_debs() {
    local release target failed=0
    stop_e2e_debs
    for release in "${E2E_DEBS_RELEASES[@]}"; do
        target=$E2E_DEBS_DIR/rq-worker-service_$release.deb
        if [ ! -f "$target" ] && [ ! -e "$target.building" ]; then
            echo "scripts/test: packaging/build-deb --release $release failed; its output:" >&2
            tail -n 60 "$target.log" >&2
            failed=1
        fi
    done
    return "$failed"
}
