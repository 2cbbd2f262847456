#!/usr/bin/env bash
# `make arm-board`: an ARM64 board to test against without owning one. Builds, once, a Debian arm64 root
# filesystem that qemu-aarch64 runs in user mode (no binfmt; the build itself needs no root), installs the
# aarch64 wheels of numpy, onnxruntime and ai-edge-litert into it from this machine, and starts an sshd on
# 127.0.0.1 so `edgekd bench … --device arm64-emulated` (devices/arm64-emulated.yaml) reaches it like a board.
#
#   devices/arm64/setup.sh               build what is missing (a second call builds nothing), start the sshd
#   devices/arm64/setup.sh --stop        stop the board's sshd
#   devices/arm64/setup.sh --rebuild     delete the root filesystem and build it again
#   devices/arm64/setup.sh --pip PKG…    install (or repair) packages on the board from their aarch64 wheels
#
# Environment: PYTHON  host Python with pip and edgekd (default: the repository's .venv/bin/python)
#              MIRROR  Debian mirror (default: the one this machine's apt sources use)
# Each step leaves a marker in rootfs/.edgekd/; an interrupted build resumes at the first step without one.
# The board counts as built only once rootfs/$BOARD_READY exists, which is written last.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=board.env
source "$here/board.env"
rootfs=$here/rootfs
state=$rootfs/.edgekd
ready=$rootfs/$BOARD_READY
profile=$repo/devices/arm64-emulated.yaml
PYTHON=${PYTHON:-$repo/.venv/bin/python}
case $PYTHON in /*) ;; */*) PYTHON=$PWD/$PYTHON ;; *) PYTHON=$(command -v "$PYTHON" || echo "$PYTHON") ;; esac
started=$(date +%s)

say() { printf 'arm-board: %s\n' "$*"; }
die() { printf 'arm-board: error: %s\n' "$*" >&2; exit 1; }
step_done() { [ -f "$state/$1" ]; }
mark() { mkdir -p "$state"; printf '%s\n' "${2:-done}" >"$state/$1.tmp"; mv "$state/$1.tmp" "$state/$1"; }
# The board's Python before the board is complete (the launcher refuses otherwise).
board_python() { EDGEKD_BOARD_SETUP=1 "$here/python" "$@"; }
board_sshd() { "$PYTHON" -m edgekd.devices.emulated "$1" "$profile"; }

# ---------------------------------------------------------------------------------------------- wheels
# pip install for the board: its Python version, and every manylinux tag its glibc runs (manylinux2014 and
# manylinux_2_17 … manylinux_2_<its minor>: pip matches --platform tags exactly, it does not widen them, and
# e.g. ai-edge-litert 2.x ships only manylinux_2_27 aarch64 wheels).
pip_for_board() {
    [ -x "$rootfs/usr/bin/python3" ] || die "the board's root filesystem is not built: run \`make arm-board\`"
    python_version=$(basename "$(readlink -f "$rootfs/usr/bin/python3")")
    python_version=${python_version#python}
    [[ $python_version =~ ^3\.[0-9]+$ ]] || die "no python3 in $rootfs (rebuild: setup.sh --rebuild)"
    site=$rootfs/usr/local/lib/python$python_version/dist-packages
    local glibc_minor minor
    glibc_minor=$(board_python -c 'import os; print(os.confstr("CS_GNU_LIBC_VERSION").split(".")[1])')
    platforms=(--platform manylinux2014_aarch64)
    for ((minor = 17; minor <= glibc_minor; minor++)); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
    pip_args=(-m pip install --disable-pip-version-check --only-binary=:all: --implementation cp
              --python-version "$python_version" "${platforms[@]}")
    platforms_text="manylinux_2_17…2_${glibc_minor}_aarch64"
}

# ---------------------------------------------------------------------------------------------- tools
find_debootstrap() { command -v debootstrap 2>/dev/null || { [ -x /usr/sbin/debootstrap ] && echo /usr/sbin/debootstrap; }; }

install_tools() {
    local missing=()
    command -v "$BOARD_EMULATOR" >/dev/null 2>&1 || missing+=(qemu-user-static)
    find_debootstrap >/dev/null || missing+=(debootstrap)
    command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
    { command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || missing+=(openssh-server)
    { command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; } || missing+=(openssh-client)
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "missing ${missing[*]}: install them as root (\`sudo apt-get install ${missing[*]}\`), then run this again"
    fi
}

# ---------------------------------------------------------------------------------------------- rootfs
build() {
    if [ -d "$rootfs" ]; then
        say "found a half-built root filesystem in $rootfs (no $BOARD_READY): resuming"
    fi

    if ! step_done downloaded; then
        local mirror=${MIRROR:-}
        [ -n "$mirror" ] || mirror=$("$PYTHON" -m edgekd.devices.emulated mirror) || exit 1
        say "downloading Debian $BOARD_SUITE arm64 (minbase + python3) from $mirror"
        # --download-only needs no root and checks the Release signature; debs already in the cache are
        # validated and kept, so an interrupted download resumes.
        mkdir -p "$state"
        local log=$state/debootstrap.log
        if ! "$(find_debootstrap)" --download-only --arch=arm64 --variant=minbase --include=python3 \
                "$BOARD_SUITE" "$rootfs" "$mirror" >"$log" 2>&1; then
            tail -5 "$log" >&2
            die "debootstrap failed (full log: $log)"
        fi
        rm -f "$log"
        mark downloaded "$mirror"
    fi

    if ! step_done unpacked; then
        # No second stage: it would run arm64 maintainer scripts (binfmt needed). Unpacking the packages gives
        # what the runner needs: libc, python3 and its standard library.
        say "unpacking $(find "$rootfs/var/cache/apt/archives" -name '*.deb' | wc -l) packages"
        local deb
        for deb in "$rootfs"/var/cache/apt/archives/*.deb; do
            dpkg-deb -x "$deb" "$rootfs"
        done
        mark unpacked
    fi

    pip_for_board
    if ! step_done wheels; then
        local pins=() package host_version available choice
        for package in $BOARD_PACKAGES; do
            host_version=$("$PYTHON" -c 'import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass' "$package")
            available=$("$PYTHON" -m pip index versions "$package" --disable-pip-version-check --only-binary=:all: \
                        --implementation cp --python-version "$python_version" "${platforms[@]}" 2>/dev/null \
                        | sed -n 's/^Available versions: //p; s/^[^ ]* (\([^)]*\))$/\1/p' | tr -d ',' | tr ' ' '\n')
            [ -n "$available" ] || die "no aarch64 wheel of $package for Python $python_version on the package index"
            if [ -n "$host_version" ] && grep -qxF "$host_version" <<<"$available"; then
                choice=$host_version  # the same version on both sides: parity then compares architectures only
            else
                choice=$(head -1 <<<"$available")
                say "$package: the host has ${host_version:-none}, which has no aarch64 wheel for Python $python_version; the board gets $choice (the newest that has one)"
            fi
            pins+=("$package==$choice")
        done
        say "installing aarch64 wheels into the board ($platforms_text): ${pins[*]}"
        "$PYTHON" "${pip_args[@]}" --quiet --no-warn-conflicts --upgrade --target "$site" "${pins[@]}"
        mark wheels "${pins[*]}"
    fi

    if ! step_done cpuinfo; then
        say "writing the board's /proc/cpuinfo ($BOARD_MODEL, the features qemu's $BOARD_CPU offers)"
        # onnxruntime reads /proc/cpuinfo to pick kernels and crashes on the host's x86 one; qemu's -L shows
        # the guest rootfs/proc/cpuinfo instead (no mount namespace needed). Its content: cpuinfo.py.
        board_python "$here/cpuinfo.py" "$BOARD_MIDR" "$BOARD_MODEL" >"$rootfs/proc/cpuinfo.tmp"
        mv "$rootfs/proc/cpuinfo.tmp" "$rootfs/proc/cpuinfo"
        mark cpuinfo
    fi

    say "checking the board: its Python imports numpy, onnxruntime and ai_edge_litert"
    local check
    check=$(board_python -c 'import platform, numpy, onnxruntime
from importlib import metadata
import ai_edge_litert.interpreter
print(platform.machine(), "Python", platform.python_version(), "numpy", numpy.__version__, "onnxruntime",
      onnxruntime.__version__, "ai-edge-litert", metadata.version("ai-edge-litert"))') \
        || die "the board's Python cannot import its packages (see above); rebuild with setup.sh --rebuild"
    say "board: $check"

    rm -f "$rootfs"/var/cache/apt/archives/*.deb  # 40 MB the board no longer needs
    # What the runner's "runtime missing" fix tells a user to run ({package}: the missing one).
    local hint="on this machine: $(printf '%q' "$here/setup.sh") --pip {package} (pip install --only-binary=:all: --python-version $python_version --platform $platforms_text --target $(printf '%q' "$site") {package})"
    {
        printf 'BOARD_PYTHON=%q\n' "$python_version"
        printf 'BOARD_PIP_INSTALL=%q\n' "$hint"
        printf 'BOARD_CHECK=%q\n' "$check"
        printf 'BOARD_BUILT_AT=%q\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$ready.tmp"
    mv "$ready.tmp" "$ready"
    say "root filesystem built in $(( $(date +%s) - started )) s ($(du -sh "$rootfs" | cut -f1))"
}

main() {
    [ -x "$PYTHON" ] || die "no Python at $PYTHON: run \`make venv\` first, or set PYTHON to a Python with pip and edgekd"
    case "${1:-}" in
        --pip)
            shift
            [ $# -gt 0 ] || die "usage: setup.sh --pip PACKAGE…"
            pip_for_board
            say "pip install ${*} for the board (Python $python_version, $platforms_text) into $site"
            exec "$PYTHON" "${pip_args[@]}" --quiet --no-warn-conflicts --upgrade --target "$site" "$@" ;;
        --stop) board_sshd stop | sed 's/^/arm-board: /'; return "${PIPESTATUS[0]}" ;;
        --rebuild) say "deleting $rootfs"; rm -rf "$rootfs" ;;
        "") ;;
        *) die "unknown option '$1' (usage: setup.sh [--stop | --rebuild | --pip PACKAGE…])" ;;
    esac
    install_tools
    if [ -f "$ready" ]; then
        say "root filesystem already built ($rootfs; rebuild with setup.sh --rebuild)"
    else
        build
    fi
    board_sshd serve | sed 's/^/arm-board: /'
    say "ready in $(( $(date +%s) - started )) s; try: .venv/bin/edgekd bench export/demo/artifacts/student-onnx-int8_static --device arm64-emulated"
}

# Last line, so bash has read the whole file before running any of it (an edit or a `git pull` during a build
# cannot change what the running build executes).
main "$@"
