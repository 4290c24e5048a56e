//! Linux bzImage: the setup header (Documentation/arch/x86/boot.rst) locates the
//! compressed payload, which expands to the vmlinux ELF whose code is scanned.

use super::decompress::{decompress, Compression, MAX_DECOMPRESSED_SIZE};
use super::{elf, Format, Image, ImageError};

pub use vmm::loader::linux::{
    is_bzimage, HEADER_MAGIC as SETUP_HEADER_MAGIC,
    HEADER_MAGIC_OFFSET as SETUP_HEADER_MAGIC_OFFSET,
};
use vmm::loader::linux::{read_header, LinuxLoadError};

/// The protocol version that introduced `payload_offset`/`payload_length`.
const PAYLOAD_FIELDS_VERSION: u16 = 0x0208;

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

/// The engine's refusal of the setup header as this reader names it.
fn header_error(e: LinuxLoadError) -> ImageError {
    match e {
        LinuxLoadError::ProtocolTooOld { major, minor } => {
            ImageError::OldBootProtocol { major, minor }
        }
        LinuxLoadError::Truncated { part, needed, len } => ImageError::CorruptBzImage {
            field: part,
            reason: format!("file is {len} bytes, the field needs {needed}"),
        },
        other => ImageError::CorruptBzImage {
            field: "setup header",
            reason: other.to_string(),
        },
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
    let header = read_header(bytes).map_err(header_error)?;
    let protocol = header.protocol;
    if protocol < PAYLOAD_FIELDS_VERSION {
        let [minor, major] = protocol.to_le_bytes();
        return Err(ImageError::OldBootProtocol { major, minor });
    }
    let setup_sects = u8::try_from(header.setup_sects).unwrap_or(u8::MAX);
    let pm_offset = header.pm_offset();
    let payload_offset = header.payload_offset as usize;
    let payload_length = header.payload_length as usize;
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

    /// A header with one setup sector and 16 bytes of protected-mode code (zeros).
    fn header(version: u16, payload_offset: u32, payload_length: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x410];
        b[0x1f1] = 1; // setup_sects
        b[0x1f4] = 1; // syssize: one paragraph
        b[0x211] = 1; // loadflags: LOADED_HIGH
        b[SETUP_HEADER_MAGIC_OFFSET..SETUP_HEADER_MAGIC_OFFSET + 4]
            .copy_from_slice(&SETUP_HEADER_MAGIC);
        b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&payload_length.to_le_bytes());
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
        let err = parse(&header(0x0201, 0, 0)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::OldBootProtocol { major: 2, minor: 1 }
        ));
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
        b[0x400..0x408].copy_from_slice(b"\x7fELF\x01\x01\x01\x00");
        assert!(matches!(
            parse(&b),
            Err(ImageError::UnknownCompression { .. })
        ));
        let mut b = header(0x020f, 0, 8);
        b[0x400..0x408].copy_from_slice(b"BZh91AY&");
        assert!(matches!(
            parse(&b),
            Err(ImageError::UnsupportedCompression { method: "bzip2" })
        ));
    }

    #[test]
    fn truncated_images_name_the_part() {
        let b = header(0x020f, 0, 0);
        let err = parse(&b[..0x240]).unwrap_err();
        assert!(matches!(
            err,
            ImageError::CorruptBzImage {
                field: "setup header",
                ..
            }
        ));
        let err = parse(&b[..0x300]).unwrap_err();
        assert!(matches!(
            err,
            ImageError::CorruptBzImage {
                field: "setup sectors (setup_sects)",
                ..
            }
        ));
    }
}
