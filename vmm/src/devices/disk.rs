//! Disk images behind the IDE drives: a [`Disk`] is a run of 512-byte sectors with
//! positional reads and writes and a flush. [`ImageFile`] keeps them in a raw image file,
//! opened and checked before the guest runs (afterwards the monitor may only `pread64`,
//! `pwrite64` and `fdatasync`); [`MemDisk`] keeps them in memory, for tests.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Bytes per sector: the unit of every disk transfer.
pub const SECTOR_SIZE: usize = 512;
/// [`SECTOR_SIZE`] as a byte offset factor.
const SECTOR_BYTES: u64 = 512;

/// Storage for one drive: whole sectors, addressed from 0.
///
/// Callers keep every access inside [`Disk::sectors`] and pass buffers that are whole
/// sectors long; an implementation may refuse anything else with an I/O error.
pub trait Disk: Send {
    /// Capacity in sectors (never 0).
    fn sectors(&self) -> u64;
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
    /// Fills `buf` (a multiple of [`SECTOR_SIZE`] bytes) from sector `lba` on.
    ///
    /// # Errors
    /// The host could not read the image.
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Stores `buf` (a multiple of [`SECTOR_SIZE`] bytes) from sector `lba` on.
    ///
    /// # Errors
    /// The disk is read-only or the host could not write the image.
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable.
    ///
    /// # Errors
    /// The host could not flush the image.
    fn flush(&mut self) -> io::Result<()>;
}

/// Why a disk image cannot be used; every variant names the file.
#[derive(Debug, Error)]
pub enum DiskError {
    /// The file cannot be opened (missing, no permission, ...).
    #[error("cannot open disk image {}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The file's size cannot be found.
    #[error("cannot find the size of disk image {}", path.display())]
    Size {
        /// The image.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The file is empty.
    #[error("disk image {} is empty: expected a raw image of at least one 512-byte sector", path.display())]
    Empty {
        /// The image.
        path: PathBuf,
    },
    /// The size is not a whole number of sectors.
    #[error(
        "disk image {} is {size} bytes, not a multiple of 512: expected a raw image of whole \
         512-byte sectors",
        path.display()
    )]
    PartialSector {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
}

/// A raw disk image file.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
}

impl ImageFile {
    /// Opens `path` for reading and writing, or for reading only when `read_only` is set or
    /// the file is not writable (the drive then refuses writes), and checks its size: a
    /// non-empty whole number of 512-byte sectors.
    ///
    /// # Errors
    /// [`DiskError`] naming the file and what was expected of it.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let (mut file, read_only) = if read_only {
            (File::open(path).map_err(open_err)?, true)
        } else {
            match OpenOptions::new().read(true).write(true).open(path) {
                Ok(f) => (f, false),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    (File::open(path).map_err(open_err)?, true)
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        // The end offset, not the metadata length: a block device has no length there.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        if size == 0 {
            return Err(DiskError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !size.is_multiple_of(SECTOR_BYTES) {
            return Err(DiskError::PartialSector {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            sectors: size / SECTOR_BYTES,
            read_only,
        })
    }

    /// Where the image lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The byte offset of sector `lba`, when the access of `len` bytes lies inside `sectors`.
fn offset(lba: u64, len: usize, sectors: u64) -> io::Result<u64> {
    let count = u64::try_from(len / SECTOR_SIZE).unwrap_or(u64::MAX);
    if !len.is_multiple_of(SECTOR_SIZE) || lba.checked_add(count).is_none_or(|end| end > sectors) {
        return Err(outside(lba, len));
    }
    Ok(lba * SECTOR_BYTES)
}

fn outside(lba: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes at sector {lba} are not whole sectors inside the disk"),
    )
}

fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "the disk is read-only")
}

impl Disk for ImageFile {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = offset(lba, buf.len(), self.sectors)?;
        self.file.read_exact_at(buf, at)
    }

    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        let at = offset(lba, buf.len(), self.sectors)?;
        self.file.write_all_at(buf, at)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

/// A disk held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    /// The contents, a whole number of sectors.
    pub data: Vec<u8>,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Flushes so far.
    pub flushes: u64,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors (at least one).
    pub fn new(sectors: u64) -> Self {
        let len = usize::try_from(sectors.max(1)).unwrap_or(usize::MAX / SECTOR_SIZE);
        Self {
            data: vec![0; len * SECTOR_SIZE],
            read_only: false,
            flushes: 0,
        }
    }

    /// The bytes of `len` at sector `lba`: whole sectors inside the disk.
    fn span(&self, lba: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let at = offset(lba, len, self.sectors())?;
        usize::try_from(at)
            .ok()
            .and_then(|at| Some(at..at.checked_add(len)?))
            .ok_or_else(|| outside(lba, len))
    }
}

impl Disk for MemDisk {
    fn sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        let span = self.span(lba, buf.len())?;
        let data = self.data.get(span).ok_or_else(|| outside(lba, buf.len()))?;
        buf.copy_from_slice(data);
        Ok(())
    }

    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        let span = self.span(lba, buf.len())?;
        let data = self
            .data
            .get_mut(span)
            .ok_or_else(|| outside(lba, buf.len()))?;
        data.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn an_image_is_read_and_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 4 * SECTOR_SIZE];
        bytes[SECTOR_SIZE] = 0xab;
        let p = image(dir.path(), "a.img", &bytes);
        let mut d = ImageFile::open(&p, false).unwrap();
        assert_eq!(d.sectors(), 4);
        assert!(!d.is_read_only());
        let mut buf = [0u8; SECTOR_SIZE];
        d.read_sectors(1, &mut buf).unwrap();
        assert_eq!(buf[0], 0xab);
        d.write_sectors(3, &[0x5a; SECTOR_SIZE]).unwrap();
        d.flush().unwrap();
        let after = std::fs::read(&p).unwrap();
        assert!(after[3 * SECTOR_SIZE..].iter().all(|&b| b == 0x5a));
        assert!(d.read_sectors(4, &mut buf).is_err(), "past the end");
        assert!(d.read_sectors(u64::MAX, &mut buf).is_err(), "overflowing");
        assert!(d.write_sectors(0, &[0; 3]).is_err(), "not a whole sector");
        assert_eq!(d.path(), p);
    }

    #[test]
    fn a_read_only_image_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "ro.img", &[7; SECTOR_SIZE]);
        let mut d = ImageFile::open(&p, true).unwrap();
        assert!(d.is_read_only());
        assert!(d.write_sectors(0, &[0; SECTOR_SIZE]).is_err());
        d.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), vec![7; SECTOR_SIZE]);
    }

    #[test]
    fn bad_images_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let e = ImageFile::open(&missing, false).unwrap_err();
        assert!(matches!(e, DiskError::Open { .. }));
        assert!(e.to_string().contains("missing.img"), "{e}");
        let empty = image(dir.path(), "empty.img", &[]);
        let e = ImageFile::open(&empty, false).unwrap_err();
        assert!(matches!(e, DiskError::Empty { .. }));
        assert!(e.to_string().contains("empty.img"), "{e}");
        let odd = image(dir.path(), "odd.img", &[0; 513]);
        let e = ImageFile::open(&odd, false).unwrap_err();
        assert!(matches!(e, DiskError::PartialSector { size: 513, .. }));
        assert!(
            e.to_string().contains("odd.img") && e.to_string().contains("513"),
            "{e}"
        );
    }

    #[test]
    fn memory_disks_check_bounds_and_read_only() {
        let mut d = MemDisk::new(2);
        assert_eq!(d.sectors(), 2);
        d.write_sectors(1, &[1; SECTOR_SIZE]).unwrap();
        let mut buf = [0; 2 * SECTOR_SIZE];
        d.read_sectors(0, &mut buf).unwrap();
        assert_eq!(buf[SECTOR_SIZE], 1);
        assert!(d.read_sectors(1, &mut buf).is_err());
        d.read_only = true;
        assert!(d.write_sectors(0, &[0; SECTOR_SIZE]).is_err());
    }
}
