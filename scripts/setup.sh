#!/usr/bin/env bash
# Installs what building and testing the monitor needs on a fresh Debian machine and
# fetches the reference inputs. Idempotent; safe to run before every build.
#   - gcc/binutils: the guest kernels are built with the host gcc in 32-bit mode
#   - qemu-system-x86: the guest suite runs side by side under QEMU's TCG for comparison
#   - xz-utils: unpacking Debian's i386 kernel
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v ld >/dev/null || need+=(binutils)
command -v xz >/dev/null || need+=(xz-utils)
command -v qemu-system-i386 >/dev/null || need+=(qemu-system-x86)
command -v dpkg-deb >/dev/null || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing ${need[*]}; run as root or install them" >&2
        exit 1
    fi
    archives=$(mktemp -d)
    apt-get update -qq
    # This image's apt deletes downloaded .deb files between dpkg steps; a private
    # archive directory keeps a multi-package install intact. Retry once.
    apt-get install -y -q -o Dir::Cache::Archives="$archives/" "${need[@]}" ||
        apt-get install -y -q -o Dir::Cache::Archives="$archives/" "${need[@]}"
fi
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
echo "setup: ok"
