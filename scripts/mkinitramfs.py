#!/usr/bin/env python3
"""Writes the guest's initramfs: a cpio archive in the "newc" format Linux unpacks
(Documentation/driver-api/early-userspace/buffer-format.rst), so no cpio tool is needed.

    scripts/mkinitramfs.py BUSYBOX INIT PROFILE OUT

The archive holds /bin/busybox (a static i386 busybox), /bin/sh linking to it, /init
and /etc/profile (copied from INIT and PROFILE), the empty mount points /proc, /sys and
/dev, and the /dev/console node the kernel opens for init before devtmpfs is mounted.
It is reproducible: every entry is owned by root with mtime 0, in a fixed order.
"""

import os
import sys

# Mode bits of the entries (st_mode).
S_IFMT, S_IFDIR, S_IFREG = 0o170000, 0o040000, 0o100000
S_IFLNK, S_IFCHR = 0o120000, 0o020000


def pad4(n):
    return (4 - n % 4) % 4


def entry(ino, name, mode, data=b"", rdev=(0, 0), nlink=1):
    """One newc header (magic 070701, thirteen 8-digit hex fields), the NUL-terminated
    name and the data, each padded to a multiple of four bytes."""
    name_bytes = name.encode() + b"\0"
    fields = [
        ino,
        mode,
        0,  # uid
        0,  # gid
        nlink,
        0,  # mtime
        len(data),
        0,  # devmajor
        0,  # devminor
        rdev[0],
        rdev[1],
        len(name_bytes),
        0,  # check (only for the 070702 format)
    ]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name_bytes
    out += b"\0" * pad4(len(out))
    out += data + b"\0" * pad4(len(data))
    return out


def main(argv):
    if len(argv) != 5:
        sys.exit("usage: mkinitramfs.py BUSYBOX INIT PROFILE OUT")
    busybox, init, profile, out = argv[1:]
    with open(busybox, "rb") as f:
        busybox_bytes = f.read()
    with open(init, "rb") as f:
        init_bytes = f.read()
    with open(profile, "rb") as f:
        profile_bytes = f.read()
    entries = [
        ("bin", S_IFDIR | 0o755, b"", (0, 0)),
        ("bin/busybox", S_IFREG | 0o755, busybox_bytes, (0, 0)),
        ("bin/sh", S_IFLNK | 0o777, b"busybox", (0, 0)),
        ("dev", S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", S_IFCHR | 0o600, b"", (5, 1)),
        ("etc", S_IFDIR | 0o755, b"", (0, 0)),
        ("etc/profile", S_IFREG | 0o644, profile_bytes, (0, 0)),
        ("init", S_IFREG | 0o755, init_bytes, (0, 0)),
        ("proc", S_IFDIR | 0o755, b"", (0, 0)),
        ("sbin", S_IFDIR | 0o755, b"", (0, 0)),
        ("sys", S_IFDIR | 0o755, b"", (0, 0)),
    ]
    archive = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        nlink = 2 if mode & S_IFMT == S_IFDIR else 1
        archive += entry(ino, name, mode, data, rdev, nlink)
    archive += entry(0, "TRAILER!!!", 0)
    # Padded to whole 512-byte blocks, as cpio writes it.
    archive += b"\0" * ((512 - len(archive) % 512) % 512)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(archive)
    os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv)
