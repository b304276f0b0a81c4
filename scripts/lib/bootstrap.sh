# Shared by scripts/test and scripts/demo: install Debian packages and the project's virtualenv.

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# bootstrap_apt PKG...: install the packages that are missing (apt-get update only when needed).
bootstrap_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "Installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# bootstrap_venv: ./.venv on Debian's python3 (the one the .deb uses), with the project and its test extras.
bootstrap_venv() {
    if [ ! -x .venv/bin/python ]; then
        /usr/bin/python3 -m venv .venv
    fi
    if ! .venv/bin/python -c "import rq_worker_service, fakeredis, pytest" 2>/dev/null \
        || [ pyproject.toml -nt .venv/.installed ]; then
        echo "Installing the project and its test tools in ./.venv"
        if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" >.venv/pip.log 2>&1; then
            cat .venv/pip.log >&2
            return 1
        fi
        touch .venv/.installed
    fi
}
