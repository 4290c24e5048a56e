#!/usr/bin/env bash
# Installs what one purpose needs on a fresh Debian machine. Idempotent; safe to run
# before every build; fails loudly.
#   scripts/setup.sh run    running the monitor and the guest kernels it boots:
#                           gcc/binutils (the guest kernels are built with the host gcc
#                           in 32-bit mode; gcc is also the Rust linker's driver, and
#                           libc6-dev its C runtime, which gcc installed without
#                           recommended packages lacks), and the Linux guest under target/debian/:
#                           Debian's i386 686 and 686-pae kernels, busybox-static and the
#                           initramfs built from it (scripts/debian-kernel.sh,
#                           scripts/debian-initramfs.sh; they need xz-utils, dpkg, python3)
#   scripts/setup.sh test   the above, plus what the tests need:
#                           qemu-system-x86 (the guest suite runs side by side under
#                           QEMU's TCG for comparison; no recommended packages),
#                           gdb (the gdb stub is tested by real gdb in batch mode)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
purpose=${1:-}
case "$purpose" in
run | test) ;;
*)
    echo "usage: scripts/setup.sh run|test" >&2
    exit 2
    ;;
esac

# Installs the named packages if any is given, with apt, as root.
install() {
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing $*; run as root or install them" >&2
        exit 1
    fi
    archives=$(mktemp -d)
    apt-get update -qq
    # This image's apt deletes downloaded .deb files between dpkg steps; a private
    # archive directory keeps a multi-package install intact. Retry once.
    apt-get install -y -q --no-install-recommends -o Dir::Cache::Archives="$archives/" "$@" ||
        apt-get install -y -q --no-install-recommends -o Dir::Cache::Archives="$archives/" "$@"
    rm -rf "$archives"
}

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v ld >/dev/null || need+=(binutils)
dpkg-query -W -f='${Status}' libc6-dev 2>/dev/null | grep -q "ok installed" || need+=(libc6-dev)
command -v xz >/dev/null || need+=(xz-utils)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v python3 >/dev/null || need+=(python3)
if [ "$purpose" = test ]; then
    command -v qemu-system-i386 >/dev/null || need+=(qemu-system-x86)
    command -v gdb >/dev/null || need+=(gdb)
fi
install "${need[@]}"

# 32-bit freestanding compile check: fail loudly here rather than deep in a build script.
probe=$(mktemp -d)
echo 'int f(int x) { return x + 1; }' >"$probe/t.c"
if ! gcc -m32 -ffreestanding -nostdlib -c "$probe/t.c" -o "$probe/t.o" 2>"$probe/err"; then
    echo "setup: gcc cannot build 32-bit freestanding code:" >&2
    cat "$probe/err" >&2
    exit 1
fi
rm -rf "$probe"
"$root/scripts/debian-kernel.sh" >/dev/null
"$root/scripts/debian-initramfs.sh" >/dev/null
echo "setup ($purpose): ok"
