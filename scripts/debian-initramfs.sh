#!/usr/bin/env bash
# Fetches what a Linux guest needs beside Debian's 686 kernel (scripts/debian-kernel.sh)
# and builds its initramfs, under target/debian/:
#   vmlinuz-pae      - the bzImage of linux-image-*-686-pae-unsigned (PAE and NX)
#   busybox          - the static i386 busybox of busybox-static (also run natively by
#                      `vmm bench linux`)
#   initramfs.cpio   - newc archive: busybox, /init (scripts/initramfs/init), /etc/profile
#                      (scripts/initramfs/profile), /dev/console; built by
#                      scripts/mkinitramfs.py, so no cpio tool is needed
# Usage: scripts/debian-initramfs.sh [OUTDIR]   (idempotent; prints the paths)
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/debian}
mkdir -p "$out/apt/lists/partial" "$out/deb"
opts=(-oAPT::Architecture=i386 -oAPT::Architectures=i386 -oDir::State::Lists="$out/apt/lists")
updated=

# Newest package of Debian's i386 lists whose name matches the regex $1.
newest() {
    if [ -z "$updated" ]; then
        apt-get "${opts[@]}" update -qq >/dev/null 2>&1 || true
        updated=1
    fi
    apt-cache "${opts[@]}" search --names-only "$1" | awk '{print $1}' | sort -V | tail -n 1
}

# Downloads package $1 into $out/deb and unpacks it into $out/pkg. This image's apt
# deletes .deb files between steps: a private archive directory, and one retry.
fetch() {
    local pkg=$1
    rm -f "$out"/deb/"$pkg"_*.deb
    local get=(apt-get "${opts[@]}" -oDir::Cache::Archives="$out/deb/" download "$pkg")
    (cd "$out/deb" && { "${get[@]}" >/dev/null 2>&1 || "${get[@]}" >/dev/null 2>&1; }) &&
        compgen -G "$out/deb/${pkg}_*.deb" >/dev/null || {
        echo "debian-initramfs: download of $pkg failed" >&2
        exit 1
    }
    rm -rf "$out/pkg" && mkdir -p "$out/pkg"
    dpkg-deb -x "$out"/deb/"$pkg"_*.deb "$out/pkg"
    rm -f "$out"/deb/"$pkg"_*.deb
}

if [ ! -s "$out/vmlinuz-pae" ]; then
    pkg=$(newest '^linux-image-[0-9.]+-[0-9]+-686-pae-unsigned$')
    if [ -z "$pkg" ]; then
        echo "debian-initramfs: no linux-image-*-686-pae-unsigned package in Debian's i386 lists" >&2
        exit 1
    fi
    fetch "$pkg"
    cp "$out"/pkg/boot/vmlinuz-* "$out/vmlinuz-pae.tmp"
    mv "$out/vmlinuz-pae.tmp" "$out/vmlinuz-pae"
    rm -rf "$out/pkg"
fi
if [ ! -s "$out/busybox" ]; then
    fetch busybox-static
    cp "$out/pkg/bin/busybox" "$out/busybox.tmp"
    mv "$out/busybox.tmp" "$out/busybox"
    rm -rf "$out/pkg"
fi
# Rebuilt every time: cheap, and it follows edits to /init.
python3 "$root/scripts/mkinitramfs.py" "$out/busybox" "$root/scripts/initramfs/init" \
    "$root/scripts/initramfs/profile" "$out/initramfs.cpio"
echo "$out/vmlinuz-pae"
echo "$out/busybox"
echo "$out/initramfs.cpio"
