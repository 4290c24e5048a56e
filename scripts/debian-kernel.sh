#!/usr/bin/env bash
# Fetches Debian's i386 kernel (the reference input for `vmm scan` and the decoder
# differential test) and unpacks it under target/debian/:
#   vmlinuz  - the bzImage as Debian ships it
#   vmlinux  - the decompressed kernel ELF (with section headers, no symbols)
#   System.map is not shipped by Debian for this flavour, so no symbols are expected.
# Usage: scripts/debian-kernel.sh [OUTDIR]   (idempotent; prints the paths)
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/debian}
mkdir -p "$out/apt/lists/partial" "$out/deb"
if [ ! -s "$out/vmlinuz" ]; then
    opts=(-oAPT::Architecture=i386 -oAPT::Architectures=i386 -oDir::State::Lists="$out/apt/lists")
    apt-get "${opts[@]}" update -qq >/dev/null 2>&1 || true
    pkg=$(apt-cache "${opts[@]}" search --names-only '^linux-image-[0-9.]+-[0-9]+-686-unsigned$' \
        | awk '{print $1}' | sort -V | tail -n 1)
    if [ -z "$pkg" ]; then
        echo "debian-kernel: no linux-image-*-686-unsigned package found in Debian's i386 lists" >&2
        exit 1
    fi
    (cd "$out/deb" && apt-get "${opts[@]}" download "$pkg" >/dev/null 2>&1) || {
        echo "debian-kernel: download of $pkg failed" >&2
        exit 1
    }
    rm -rf "$out/pkg" && mkdir -p "$out/pkg"
    dpkg-deb -x "$out"/deb/"$pkg"_*.deb "$out/pkg"
    cp "$out"/pkg/boot/vmlinuz-* "$out/vmlinuz"
    cp "$out"/pkg/boot/config-* "$out/config"
    rm -rf "$out/pkg"
fi
if [ ! -s "$out/vmlinux" ]; then
    # Same method as Linux's scripts/extract-vmlinux: find the XZ stream magic and
    # decompress from there; --single-stream ignores the bzImage tail after the stream.
    off=$(grep -abo $'\xfd7zXZ\x00' "$out/vmlinuz" | head -n 1 | cut -d: -f1)
    if [ -z "$off" ]; then
        echo "debian-kernel: no XZ stream in $out/vmlinuz" >&2
        exit 1
    fi
    tail -c +"$((off + 1))" "$out/vmlinuz" | xz -dc --single-stream >"$out/vmlinux.tmp"
    mv "$out/vmlinux.tmp" "$out/vmlinux"
fi
echo "$out/vmlinuz"
echo "$out/vmlinux"
