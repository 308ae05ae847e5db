#!/usr/bin/env bash
# Install CPython X.Y (3.14, 3.15, ...) from Debian unstable's packages, for running the suite
# on interpreters that pyenv here lacks, WITHOUT changing the machine's apt configuration:
# apt-get gets a private sources list, state and cache (nothing under /etc/apt or
# /var/lib/apt is read for sources or written), the packages are only downloaded and
# unpacked (dpkg-deb -x, never dpkg -i), and the interpreter is pointed at the glibc it was
# built for (Debian unstable's, newer than the machine's) with patchelf.
#
# Usage: tools/install_cpython.sh X.Y [VENV]
# Prints the path of a python with pip: a venv made from the installed interpreter, in the
# cache, or a fresh one at VENV if given (Debian's ensurepip looks for its wheels in the
# machine's /usr/share/python-wheels, so `python -m venv` from this interpreter fails without
# --without-pip: VENV gets pip from the cached pip wheel). Cached and idempotent: a second
# run installs nothing and prints at once. The cache is
# ${LOGEXEC_PYTHONS:-${XDG_CACHE_HOME:-~/.cache}/logexec-pythons}/X.Y; delete it to start over.
# The archive is $LOGEXEC_DEBIAN_MIRROR (default http://deb.debian.org/debian, the archive the
# machine's own apt sources name), suite sid, component main. x86-64 Linux only, like the
# recipe (issue 20). Everything but the printed path goes to stderr.
set -euo pipefail

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ] || ! [[ "$1" =~ ^3\.[0-9]+$ ]]; then
    echo "usage: $0 X.Y (a CPython version such as 3.14; got: ${*:-nothing})" >&2
    exit 2
fi
version=$1
target=${2:-}
mirror=${LOGEXEC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache_root=${LOGEXEC_PYTHONS:-${XDG_CACHE_HOME:-$HOME/.cache}/logexec-pythons}
home=$cache_root/$version
root=$home/root     # the unpacked packages
venv=$home/venv     # made from $root's interpreter, with pip
python=$venv/bin/python
say() { echo "install_cpython $version: $*" >&2; }

# A venv at $1 from the installed interpreter, with pip from the cached wheel.
make_venv() {
    local wheel
    wheel=$(echo "$home"/pip/pip-*.whl)
    "$root/usr/bin/python$version" -m venv --without-pip "$1"
    "$1/bin/python" "$wheel/pip" install -q --disable-pip-version-check "$wheel" >&2
}
finish() {
    if [ -n "$target" ]; then
        make_venv "$target"
        echo "$target/bin/python"
    else
        echo "$python"
    fi
}

# Done before (the marker is written last, so a half-finished run starts over).
if [ -f "$home/complete" ] && "$python" -c 'import sys' 2>/dev/null; then
    finish
    exit 0
fi
if [ "$(uname -m)" != x86_64 ] || [ "$(uname -s)" != Linux ]; then
    say "x86-64 Linux only (this is $(uname -s) $(uname -m)): Debian's amd64 packages"
    exit 1
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { say "needs $tool (a Debian-based machine)"; exit 1; }
done

rm -rf "$home"
mkdir -p "$home/debs"
# A keyring the machine already trusts signs Debian unstable too.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { say "needs $keyring (package debian-archive-keyring)"; exit 1; }

# apt-get with a private sources list (SUITE main only), lists and cache under $home/apt-SUITE:
# the machine's apt configuration is neither read for sources nor written.
# Usage: private_apt_get SUITE apt-get-arguments...
private_apt_get() {
    local suite=$1 folder=$home/apt-$1
    shift
    if ! [ -d "$folder" ]; then
        mkdir -p "$folder/lists/partial" "$folder/cache/archives/partial"
        echo "deb [signed-by=$keyring] $mirror $suite main" >"$folder/sources.list"
    fi
    apt-get -qq \
        -o "Dir::Etc::SourceList=$folder/sources.list" \
        -o "Dir::Etc::SourceParts=/dev/null" \
        -o "Dir::State::Lists=$folder/lists" \
        -o "Dir::Cache=$folder/cache" \
        -o "APT::Architecture=amd64" \
        -o "APT::Sandbox::User=$(id -un)" \
        "$@" >&2
    # (The sandbox user: the folders belong to whoever runs this, and apt's _apt user may not
    # write them.)
}
say "apt-get update (private lists: sid main from $mirror)"
private_apt_get sid update

# patchelf: the machine's if it has one, else the package of the machine's own Debian release,
# fetched the same private way (unstable's patchelf 0.18 writes a python3.14 that segfaults at
# start; bookworm's 0.14 writes a working one).
if command -v patchelf >/dev/null; then
    patchelf=$(command -v patchelf)
else
    patchelf=$cache_root/patchelf/usr/bin/patchelf
    if ! [ -x "$patchelf" ]; then
        release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
        [ -n "$release" ] || { say "no patchelf, and no VERSION_CODENAME in /etc/os-release"; exit 1; }
        say "patchelf from $release main"
        private_apt_get "$release" update
        mkdir -p "$home/patchelf-deb"
        (cd "$home/patchelf-deb" && private_apt_get "$release" download patchelf)
        rm -rf "$cache_root/patchelf"
        dpkg-deb -x "$home"/patchelf-deb/patchelf_*.deb "$cache_root/patchelf"
    fi
fi

packages=(
    "python$version" "python$version-minimal" "libpython$version" "libpython$version-minimal"
    "libpython$version-stdlib" "libpython$version-testsuite" "python$version-venv"
    # The libraries they need, from unstable too: its interpreter wants its glibc.
    libc6 libssl3t64 libffi8 libexpat1 zlib1g libzstd1 liblzma5 libbz2-1.0 libsqlite3-0
    libncursesw6 libtinfo6 libreadline8t64 libuuid1 libmpdec4 libcrypt1
)
say "apt-get download ${packages[*]}"
(cd "$home/debs" && private_apt_get sid download "${packages[@]}")

say "unpacking into $root"
mkdir -p "$root"
for deb in "$home"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root"
done
# usrmerge links (lib -> usr/lib): absolute-looking paths in them would lead to the machine's
# own files; everything needed is under usr/.
for link in lib lib64 lib32 libx32 bin sbin; do
    [ -L "$root/$link" ] && rm -f "$root/$link"
done

interpreter=$root/usr/bin/python$version
libraries=$root/usr/lib/x86_64-linux-gnu
say "patchelf: $interpreter runs on $libraries/ld-linux-x86-64.so.2"
# DT_RPATH (--force-rpath), unlike DT_RUNPATH, also applies to the libraries that the
# extension modules load (_ssl needs libssl, which needs this libc).
"$patchelf" --set-interpreter "$libraries/ld-linux-x86-64.so.2" --force-rpath \
    --set-rpath "$libraries" "$interpreter"

say "a venv with pip: $venv"
# Debian's ensurepip takes its wheels from the machine's /usr/share/python-wheels: pip comes
# from PyPI instead, as a wheel that runs itself to install itself.
mkdir -p "$home/pip"
downloader=$(command -v python3)
"$downloader" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$version" -d "$home/pip" pip >&2
make_venv "$venv"
"$python" -c 'import ssl, sqlite3, ctypes, lzma, bz2, zlib, venv' >&2

touch "$home/complete"
say "ready: $("$python" --version 2>&1)"
finish
