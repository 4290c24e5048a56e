//! Sector storage services: disk-image files, copy-on-write overlays, memory.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Service, ServiceError};

/// Bytes in one sector.
pub const SECTOR_SIZE: usize = 512;
const SECTOR_BYTES: u64 = SECTOR_SIZE as u64;

/// A disk of 512-byte sectors.
pub trait Block: Service {
    /// Capacity in sectors.
    fn capacity(&self) -> u64;

    /// Reads `buf.len() / 512` sectors starting at `sector`.
    ///
    /// # Errors
    /// [`ServiceError::BadLength`] unless `buf` holds whole sectors,
    /// [`ServiceError::OutOfRange`] past the end, [`ServiceError::Io`] on host failure.
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), ServiceError>;

    /// Writes `data.len() / 512` sectors starting at `sector`.
    ///
    /// # Errors
    /// As [`Block::read`], and [`ServiceError::ReadOnly`].
    fn write(&self, sector: u64, data: &[u8]) -> Result<(), ServiceError>;

    /// Makes completed writes durable.
    ///
    /// # Errors
    /// When the host cannot sync.
    fn flush(&self) -> Result<(), ServiceError>;
}

/// Checks that `len` bytes from `sector` are whole sectors inside `capacity`; returns
/// the byte offset of `sector`.
fn check_range(sector: u64, len: usize, capacity: u64) -> Result<u64, ServiceError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(ServiceError::BadLength {
            len,
            unit: SECTOR_SIZE,
        });
    }
    let count = (len / SECTOR_SIZE) as u64;
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(sector * SECTOR_BYTES),
        _ => Err(ServiceError::OutOfRange {
            sector,
            count,
            capacity,
        }),
    }
}

/// A raw disk-image file; its length fixes the capacity (a trailing partial sector is
/// not addressable).
#[derive(Debug)]
pub struct FileBlock {
    path: PathBuf,
    file: File,
    read_only: bool,
    capacity: u64,
}

impl FileBlock {
    /// Opens an existing image file.
    ///
    /// # Errors
    /// When the file cannot be opened or examined.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ServiceError> {
        let what = || path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| ServiceError::io("open", what(), e))?;
        let len = file
            .metadata()
            .map_err(|e| ServiceError::io("stat", what(), e))?
            .len();
        Ok(FileBlock {
            path: path.to_owned(),
            file,
            read_only,
            capacity: len / SECTOR_BYTES,
        })
    }

    fn what(&self) -> String {
        self.path.display().to_string()
    }
}

impl Service for FileBlock {
    fn id(&self) -> &str {
        "file"
    }

    fn probe(&self) -> Result<(), ServiceError> {
        self.file
            .metadata()
            .map(|_| ())
            .map_err(|e| ServiceError::io("stat", self.what(), e))
    }
}

impl Block for FileBlock {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), ServiceError> {
        let offset = check_range(sector, buf.len(), self.capacity)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| ServiceError::io("read", self.what(), e))
    }

    fn write(&self, sector: u64, data: &[u8]) -> Result<(), ServiceError> {
        if self.read_only {
            return Err(ServiceError::ReadOnly {
                service: self.id().to_owned(),
            });
        }
        let offset = check_range(sector, data.len(), self.capacity)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| ServiceError::io("write", self.what(), e))
    }

    fn flush(&self) -> Result<(), ServiceError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| ServiceError::io("sync", self.what(), e))
    }
}

/// A disk held in host memory, zero-filled at start.
#[derive(Debug)]
pub struct MemoryBlock {
    data: Mutex<Vec<u8>>,
    capacity: u64,
}

impl MemoryBlock {
    /// A zeroed disk of `sectors` sectors.
    ///
    /// # Errors
    /// [`ServiceError::Unavailable`] when the size does not fit host memory addressing.
    pub fn new(sectors: u64) -> Result<Self, ServiceError> {
        let bytes = sectors
            .checked_mul(SECTOR_BYTES)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| ServiceError::Unavailable {
                service: "memory".into(),
                reason: format!("{sectors} sectors do not fit in host memory"),
            })?;
        Ok(MemoryBlock {
            data: Mutex::new(vec![0; bytes]),
            capacity: sectors,
        })
    }

    /// A disk holding `image` (padded with zeroes to a whole sector).
    pub fn from_bytes(mut image: Vec<u8>) -> Self {
        let sectors = image.len().div_ceil(SECTOR_SIZE);
        image.resize(sectors * SECTOR_SIZE, 0);
        MemoryBlock {
            data: Mutex::new(image),
            capacity: sectors as u64,
        }
    }
}

/// Byte range of a checked request inside an in-memory image.
fn mem_range(offset: u64, len: usize) -> std::ops::Range<usize> {
    // check_range bounded offset + len by the capacity, whose bytes fit a usize.
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    start..start.saturating_add(len)
}

impl Service for MemoryBlock {
    fn id(&self) -> &str {
        "memory"
    }
}

impl Block for MemoryBlock {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), ServiceError> {
        let offset = check_range(sector, buf.len(), self.capacity)?;
        buf.copy_from_slice(&self.data.lock()[mem_range(offset, buf.len())]);
        Ok(())
    }

    fn write(&self, sector: u64, data: &[u8]) -> Result<(), ServiceError> {
        let offset = check_range(sector, data.len(), self.capacity)?;
        self.data.lock()[mem_range(offset, data.len())].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> Result<(), ServiceError> {
        Ok(())
    }
}

/// Where a copy-on-write disk keeps the sectors written since the base image.
#[derive(Debug)]
pub enum CowOverlay {
    /// In host memory; lost when the service ends.
    Memory(HashMap<u64, Box<[u8; SECTOR_SIZE]>>),
    /// In a file of records (`sector` as 8 little-endian bytes, then the 512 data bytes),
    /// replayed when the overlay is reopened so a disk's changes survive the VM.
    File {
        /// The overlay's path.
        path: PathBuf,
        /// The open overlay.
        file: File,
        /// Byte offset of each overlaid sector's data.
        index: HashMap<u64, u64>,
        /// Where the next record goes.
        end: u64,
    },
}

const RECORD_BYTES: u64 = 8 + SECTOR_BYTES;

impl CowOverlay {
    /// An empty in-memory overlay.
    pub fn memory() -> Self {
        CowOverlay::Memory(HashMap::new())
    }

    /// Opens (creating if needed) an overlay file and replays its records. A torn record
    /// at the end (the host died mid-write) is ignored and later overwritten.
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    pub fn file(path: &Path) -> Result<Self, ServiceError> {
        let what = || path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| ServiceError::io("open", what(), e))?;
        let len = file
            .metadata()
            .map_err(|e| ServiceError::io("stat", what(), e))?
            .len();
        let mut index = HashMap::new();
        let mut end = 0;
        let mut head = [0u8; 8];
        while end + RECORD_BYTES <= len {
            file.read_exact_at(&mut head, end)
                .map_err(|e| ServiceError::io("read", what(), e))?;
            index.insert(u64::from_le_bytes(head), end + 8);
            end += RECORD_BYTES;
        }
        Ok(CowOverlay::File {
            path: path.to_owned(),
            file,
            index,
            end,
        })
    }

    /// Copies the overlaid sector into `out`; false when the sector is not overlaid.
    fn read(&self, sector: u64, out: &mut [u8]) -> Result<bool, ServiceError> {
        match self {
            CowOverlay::Memory(map) => Ok(map.get(&sector).is_some_and(|data| {
                out.copy_from_slice(&data[..]);
                true
            })),
            CowOverlay::File {
                path, file, index, ..
            } => match index.get(&sector) {
                None => Ok(false),
                Some(&at) => file
                    .read_exact_at(out, at)
                    .map(|()| true)
                    .map_err(|e| ServiceError::io("read", path.display().to_string(), e)),
            },
        }
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), ServiceError> {
        match self {
            CowOverlay::Memory(map) => {
                let mut copy = Box::new([0u8; SECTOR_SIZE]);
                copy.copy_from_slice(data);
                map.insert(sector, copy);
                Ok(())
            }
            CowOverlay::File {
                path,
                file,
                index,
                end,
            } => {
                let err = |e| ServiceError::io("write", path.display().to_string(), e);
                if let Some(&at) = index.get(&sector) {
                    return file.write_all_at(data, at).map_err(err);
                }
                let mut record = Vec::with_capacity(8 + SECTOR_SIZE);
                record.extend_from_slice(&sector.to_le_bytes());
                record.extend_from_slice(data);
                file.write_all_at(&record, *end).map_err(err)?;
                index.insert(sector, *end + 8);
                *end += RECORD_BYTES;
                Ok(())
            }
        }
    }

    fn flush(&self) -> Result<(), ServiceError> {
        match self {
            CowOverlay::Memory(_) => Ok(()),
            CowOverlay::File { path, file, .. } => file
                .sync_data()
                .map_err(|e| ServiceError::io("sync", path.display().to_string(), e)),
        }
    }

    /// How many sectors are overlaid.
    pub fn len(&self) -> usize {
        match self {
            CowOverlay::Memory(map) => map.len(),
            CowOverlay::File { index, .. } => index.len(),
        }
    }

    /// Whether nothing is overlaid yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A copy-on-write disk: reads come from the overlay where a sector was written, else
/// from a base image that is opened read-only and so is never modified.
#[derive(Debug)]
pub struct CowBlock {
    base: FileBlock,
    overlay: Mutex<CowOverlay>,
}

impl CowBlock {
    /// A copy-on-write disk over the image at `base`.
    ///
    /// # Errors
    /// When the base image cannot be opened.
    pub fn new(base: &Path, overlay: CowOverlay) -> Result<Self, ServiceError> {
        Ok(CowBlock {
            base: FileBlock::open(base, true)?,
            overlay: Mutex::new(overlay),
        })
    }

    /// How many sectors differ from the base image.
    pub fn overlaid_sectors(&self) -> usize {
        self.overlay.lock().len()
    }
}

impl Service for CowBlock {
    fn id(&self) -> &str {
        "cow"
    }

    fn probe(&self) -> Result<(), ServiceError> {
        self.base.probe()
    }
}

impl Block for CowBlock {
    fn capacity(&self) -> u64 {
        self.base.capacity
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), ServiceError> {
        check_range(sector, buf.len(), self.capacity())?;
        let overlay = self.overlay.lock();
        for (i, chunk) in (sector..).zip(buf.chunks_exact_mut(SECTOR_SIZE)) {
            if !overlay.read(i, chunk)? {
                self.base.read(i, chunk)?;
            }
        }
        Ok(())
    }

    fn write(&self, sector: u64, data: &[u8]) -> Result<(), ServiceError> {
        check_range(sector, data.len(), self.capacity())?;
        let mut overlay = self.overlay.lock();
        for (i, chunk) in (sector..).zip(data.chunks_exact(SECTOR_SIZE)) {
            overlay.write(i, chunk)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), ServiceError> {
        self.overlay.lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, sectors: u8) -> PathBuf {
        let path = dir.join("base.img");
        let bytes: Vec<u8> = (0..sectors)
            .flat_map(|s| std::iter::repeat_n(s, SECTOR_SIZE))
            .collect();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn file_block_persists_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 4);
        let disk = FileBlock::open(&path, false).unwrap();
        assert_eq!(disk.capacity(), 4);
        disk.write(2, &[0xAB; SECTOR_SIZE]).unwrap();
        disk.flush().unwrap();
        drop(disk);
        let disk = FileBlock::open(&path, false).unwrap();
        let mut buf = [0u8; 2 * SECTOR_SIZE];
        disk.read(1, &mut buf).unwrap();
        assert!(buf[..SECTOR_SIZE].iter().all(|&b| b == 1));
        assert!(buf[SECTOR_SIZE..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn file_block_rejects_out_of_range_and_partial_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FileBlock::open(&image(dir.path(), 4), false).unwrap();
        let mut buf = [0u8; 2 * SECTOR_SIZE];
        assert!(matches!(
            disk.read(3, &mut buf),
            Err(ServiceError::OutOfRange {
                sector: 3,
                count: 2,
                capacity: 4
            })
        ));
        assert!(matches!(
            disk.read(u64::MAX, &mut buf),
            Err(ServiceError::OutOfRange { .. })
        ));
        assert!(matches!(
            disk.write(0, &[0; 100]),
            Err(ServiceError::BadLength { len: 100, .. })
        ));
    }

    #[test]
    fn read_only_file_block_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FileBlock::open(&image(dir.path(), 2), true).unwrap();
        assert!(matches!(
            disk.write(0, &[0; SECTOR_SIZE]),
            Err(ServiceError::ReadOnly { .. })
        ));
    }

    #[test]
    fn missing_image_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileBlock::open(&dir.path().join("absent.img"), false).unwrap_err();
        assert!(matches!(err, ServiceError::Io { op: "open", .. }));
    }

    #[test]
    fn memory_block_reads_back_writes() {
        let disk = MemoryBlock::new(8).unwrap();
        let data: Vec<u8> = (0..2 * SECTOR_SIZE).map(|i| i.to_le_bytes()[0]).collect();
        disk.write(6, &data).unwrap();
        let mut buf = vec![0u8; 2 * SECTOR_SIZE];
        disk.read(6, &mut buf).unwrap();
        assert_eq!(buf, data);
        assert!(disk.read(7, &mut buf).is_err());
        assert!(MemoryBlock::new(u64::MAX).is_err());
        assert_eq!(MemoryBlock::from_bytes(vec![1; 513]).capacity(), 2);
    }

    fn cow_never_writes_base(overlay: CowOverlay, base: &Path) -> CowBlock {
        let before = std::fs::read(base).unwrap();
        let disk = CowBlock::new(base, overlay).unwrap();
        disk.write(1, &[0xEE; 2 * SECTOR_SIZE]).unwrap();
        disk.flush().unwrap();
        let mut buf = vec![0u8; 4 * SECTOR_SIZE];
        disk.read(0, &mut buf).unwrap();
        assert!(buf[..SECTOR_SIZE].iter().all(|&b| b == 0));
        assert!(buf[SECTOR_SIZE..3 * SECTOR_SIZE].iter().all(|&b| b == 0xEE));
        assert!(buf[3 * SECTOR_SIZE..].iter().all(|&b| b == 3));
        assert_eq!(disk.overlaid_sectors(), 2);
        assert_eq!(std::fs::read(base).unwrap(), before, "base image changed");
        disk
    }

    #[test]
    fn cow_in_memory_leaves_base_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let base = image(dir.path(), 4);
        let disk = cow_never_writes_base(CowOverlay::memory(), &base);
        assert!(disk.write(4, &[0; SECTOR_SIZE]).is_err());
    }

    #[test]
    fn cow_file_overlay_survives_reopen_and_rewrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let base = image(dir.path(), 4);
        let ov = dir.path().join("overlay.cow");
        drop(cow_never_writes_base(CowOverlay::file(&ov).unwrap(), &base));
        let disk = CowBlock::new(&base, CowOverlay::file(&ov).unwrap()).unwrap();
        assert_eq!(disk.overlaid_sectors(), 2);
        disk.write(2, &[0x55; SECTOR_SIZE]).unwrap();
        assert_eq!(
            std::fs::metadata(&ov).unwrap().len(),
            2 * RECORD_BYTES,
            "rewriting an overlaid sector must not grow the overlay"
        );
        let mut buf = [0u8; SECTOR_SIZE];
        disk.read(2, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0x55));
    }

    #[test]
    fn cow_overlay_ignores_a_torn_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let base = image(dir.path(), 4);
        let ov = dir.path().join("overlay.cow");
        drop(cow_never_writes_base(CowOverlay::file(&ov).unwrap(), &base));
        let mut bytes = std::fs::read(&ov).unwrap();
        bytes.extend_from_slice(&[9; 100]);
        std::fs::write(&ov, bytes).unwrap();
        let disk = CowBlock::new(&base, CowOverlay::file(&ov).unwrap()).unwrap();
        assert_eq!(disk.overlaid_sectors(), 2);
    }
}
