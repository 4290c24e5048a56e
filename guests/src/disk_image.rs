//! The disk images a `tests.cfg` entry asks for with `disks = SIZE…`: fresh raw images,
//! one per drive (the first is the primary channel's master, the second its slave), made
//! for every run so a guest's writes never reach the next one.
//!
//! The first [`PATTERN_BYTES`] of image `disk` (0 or 1) hold a pattern the guest kernels
//! know (`kernels/ide.c` computes the same function): byte `k` of sector `lba` is
//! - for `k` < 4, byte `k` of `lba` (little-endian),
//! - for `k` = 4, `disk`,
//! - otherwise `(k + 3 * lba + 0x40 * disk) mod 256`.
//!
//! Beyond that the image is a hole and reads as zeros, so an image can be larger than
//! 2^28 sectors (LBA48 territory) and still cost nothing. Sector 0 never ends in the
//! 55 AA boot signature, so QEMU does not guess a geometry from a partition table.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Bytes at the start of an image that hold the pattern (4 MiB).
pub const PATTERN_BYTES: u64 = 4 << 20;
/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// Byte `offset` (0–511) of sector `lba` of image `disk`.
pub fn pattern_byte(disk: u8, lba: u64, offset: usize) -> u8 {
    let k = offset % 512;
    if k < 4 {
        return lba.to_le_bytes()[k];
    }
    if k == 4 {
        return disk;
    }
    let v = (k as u64)
        .wrapping_add(lba.wrapping_mul(3))
        .wrapping_add(0x40 * u64::from(disk));
    v.to_le_bytes()[0]
}

/// Writes a fresh image of `size` bytes (a non-zero multiple of 512) for `disk` at `path`.
///
/// # Errors
/// The file cannot be created or written.
pub fn create(path: &Path, disk: u8, size: u64) -> io::Result<()> {
    let file = File::create(path)?;
    let mut out = BufWriter::new(&file);
    let mut sector = [0u8; 512];
    for lba in 0..size.min(PATTERN_BYTES) / SECTOR {
        for (k, b) in sector.iter_mut().enumerate() {
            *b = pattern_byte(disk, lba, k);
        }
        out.write_all(&sector)?;
    }
    out.flush()?;
    drop(out);
    file.set_len(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_hold_the_pattern_then_zeros() {
        let dir = std::env::temp_dir().join(format!("guests-disk-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.img");
        create(&path, 1, PATTERN_BYTES + 4096).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, PATTERN_BYTES + 4096);
        assert_eq!(
            &bytes[512 * 7..512 * 7 + 6],
            &[7, 0, 0, 0, 1, 0x40 + 5 + 21]
        );
        assert!(bytes[usize::try_from(PATTERN_BYTES).unwrap()..]
            .iter()
            .all(|&b| b == 0));
        assert_ne!(&bytes[510..512], &[0x55, 0xaa], "no boot signature");
        create(&path, 0, 1024).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 1024);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
