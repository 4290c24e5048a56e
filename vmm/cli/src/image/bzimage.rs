//! Linux bzImage: the setup header (Documentation/arch/x86/boot.rst) locates the
//! compressed payload, which expands to the vmlinux ELF whose code is scanned.

use super::decompress::{decompress, Compression, MAX_DECOMPRESSED_SIZE};
use super::{elf, Format, Image, ImageError};

/// "HdrS", the setup header signature.
pub const SETUP_HEADER_MAGIC: [u8; 4] = *b"HdrS";
/// Offset of the signature in the file.
pub const SETUP_HEADER_MAGIC_OFFSET: usize = 0x202;
/// `setup_sects`: number of 512-byte setup sectors after the boot sector; 0 means 4.
const SETUP_SECTS_OFFSET: usize = 0x1f1;
/// `version`: boot protocol version, major in the high byte.
const VERSION_OFFSET: usize = 0x206;
/// `payload_offset`: start of the payload, relative to the protected-mode code.
const PAYLOAD_OFFSET_OFFSET: usize = 0x248;
/// `payload_length`.
const PAYLOAD_LENGTH_OFFSET: usize = 0x24c;
/// The protocol version that introduced `payload_offset`/`payload_length`.
const PAYLOAD_FIELDS_VERSION: u16 = 0x0208;
/// Value of a zero `setup_sects`, kept for compatibility with ancient kernels.
const DEFAULT_SETUP_SECTS: u8 = 4;
const SECTOR_SIZE: usize = 512;

/// What the setup header says about the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BzImageInfo {
    /// Boot protocol version, major in the high byte.
    pub protocol: u16,
    /// Setup sectors as the kernel counts them (0 already replaced by 4).
    pub setup_sects: u8,
    /// File offset of the protected-mode code.
    pub pm_offset: usize,
    /// File offset of the compressed payload.
    pub payload_offset: usize,
    /// Length of the compressed payload.
    pub payload_length: usize,
    /// How the payload is compressed.
    pub compression: Compression,
    /// Size of the expanded payload (the vmlinux ELF).
    pub decompressed_size: usize,
}

impl BzImageInfo {
    /// The protocol version as "major.minor".
    pub fn protocol_string(&self) -> String {
        format!("{}.{:02}", self.protocol >> 8, self.protocol & 0xff)
    }
}

/// Whether `bytes` carry the setup header signature.
pub fn is_bzimage(bytes: &[u8]) -> bool {
    bytes
        .get(SETUP_HEADER_MAGIC_OFFSET..SETUP_HEADER_MAGIC_OFFSET + SETUP_HEADER_MAGIC.len())
        .is_some_and(|m| m == SETUP_HEADER_MAGIC)
}

fn u16_at(bytes: &[u8], off: usize, field: &'static str) -> Result<u16, ImageError> {
    bytes
        .get(off..off + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| truncated(bytes, off + 2, field))
}

fn u32_at(bytes: &[u8], off: usize, field: &'static str) -> Result<u32, ImageError> {
    bytes
        .get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| truncated(bytes, off + 4, field))
}

fn truncated(bytes: &[u8], needed: usize, field: &'static str) -> ImageError {
    ImageError::CorruptBzImage {
        field,
        reason: format!("file is {} bytes, the field needs {needed}", bytes.len()),
    }
}

/// Parses a bzImage: reads the setup header, expands the payload and parses it as the
/// vmlinux ELF.
///
/// # Errors
/// [`ImageError::CorruptBzImage`] for header fields that are truncated or point outside
/// the file, [`ImageError::OldBootProtocol`] before 2.08, compression errors, and
/// [`ImageError::BadPayload`] when the expanded payload is not a usable i386 ELF.
pub fn parse(bytes: &[u8]) -> Result<Image, ImageError> {
    let setup_sects = match *bytes
        .get(SETUP_SECTS_OFFSET)
        .ok_or_else(|| truncated(bytes, SETUP_SECTS_OFFSET + 1, "setup_sects"))?
    {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    let protocol = u16_at(bytes, VERSION_OFFSET, "version")?;
    if protocol < PAYLOAD_FIELDS_VERSION {
        return Err(ImageError::OldBootProtocol {
            major: (protocol >> 8) as u8,
            minor: (protocol & 0xff) as u8,
        });
    }
    let pm_offset = (usize::from(setup_sects) + 1) * SECTOR_SIZE;
    let payload_offset = u32_at(bytes, PAYLOAD_OFFSET_OFFSET, "payload_offset")? as usize;
    let payload_length = u32_at(bytes, PAYLOAD_LENGTH_OFFSET, "payload_length")? as usize;
    let start = pm_offset + payload_offset;
    let payload = start
        .checked_add(payload_length)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| ImageError::CorruptBzImage {
            field: "payload_offset/payload_length",
            reason: format!(
                "payload at file bytes {start:#x}..{:#x} (protected-mode code at {pm_offset:#x}) \
                 lies past the end of the {}-byte file",
                start.saturating_add(payload_length),
                bytes.len()
            ),
        })?;
    if payload.is_empty() {
        return Err(ImageError::CorruptBzImage {
            field: "payload_length",
            reason: "the payload is empty".into(),
        });
    }
    let compression =
        Compression::detect(payload).ok_or_else(|| ImageError::UnknownCompression {
            magic: payload
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        })?;
    let vmlinux = decompress(compression, payload, MAX_DECOMPRESSED_SIZE)?;
    let bad_payload = |source| ImageError::BadPayload {
        method: compression,
        source: Box::new(source),
    };
    let mut image = elf::parse(&vmlinux).map_err(bad_payload)?;
    image.format = Format::BzImage;
    image.bzimage = Some(BzImageInfo {
        protocol,
        setup_sects,
        pm_offset,
        payload_offset: start,
        payload_length,
        compression,
        decompressed_size: vmlinux.len(),
    });
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u16, payload_offset: u32, payload_length: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[SETUP_SECTS_OFFSET] = 1;
        b[SETUP_HEADER_MAGIC_OFFSET..SETUP_HEADER_MAGIC_OFFSET + 4]
            .copy_from_slice(&SETUP_HEADER_MAGIC);
        b[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&version.to_le_bytes());
        b[PAYLOAD_OFFSET_OFFSET..PAYLOAD_OFFSET_OFFSET + 4]
            .copy_from_slice(&payload_offset.to_le_bytes());
        b[PAYLOAD_LENGTH_OFFSET..PAYLOAD_LENGTH_OFFSET + 4]
            .copy_from_slice(&payload_length.to_le_bytes());
        b
    }

    #[test]
    fn old_protocols_are_named() {
        let err = parse(&header(0x0206, 0, 0)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::OldBootProtocol { major: 2, minor: 6 }
        ));
        assert!(err.to_string().contains("2.06"), "{err}");
    }

    #[test]
    fn payload_past_the_end_is_reported() {
        let err = parse(&header(0x020f, 0x10, 0x1000)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::CorruptBzImage {
                field: "payload_offset/payload_length",
                ..
            }
        ));
        let err = parse(&header(0x020f, u32::MAX, u32::MAX)).unwrap_err();
        assert!(matches!(err, ImageError::CorruptBzImage { .. }));
    }

    #[test]
    fn unknown_and_unsupported_compression() {
        // Payload right after the one setup sector: file offset 0x400.
        let mut b = header(0x020f, 0, 8);
        b.extend_from_slice(b"\x7fELF\x01\x01\x01\x00");
        assert!(matches!(
            parse(&b),
            Err(ImageError::UnknownCompression { .. })
        ));
        let mut b = header(0x020f, 0, 8);
        b.extend_from_slice(b"BZh91AY&");
        assert!(matches!(
            parse(&b),
            Err(ImageError::UnsupportedCompression { method: "bzip2" })
        ));
    }

    #[test]
    fn truncated_header_names_the_field() {
        let b = header(0x020f, 0, 0);
        let err = parse(&b[..0x240]).unwrap_err();
        assert!(matches!(
            err,
            ImageError::CorruptBzImage {
                field: "payload_offset",
                ..
            }
        ));
    }
}
