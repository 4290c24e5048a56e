//! Recognising and expanding the compressed kernel payload of a bzImage.

use std::fmt;
use std::io::{self, Read};

use super::ImageError;

/// Bound on a decompressed payload. Real i386 kernels expand to a few tens of MiB; the
/// bound keeps a hostile image from exhausting memory.
pub const MAX_DECOMPRESSED_SIZE: usize = 256 << 20;

/// A compression method Linux can build its payload with, as recognised by its magic
/// (the same magics the kernel's `decompress_method()` checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (RFC 1952).
    Gzip,
    /// XZ container; Linux's x86 payload uses the x86 BCJ filter inside it.
    Xz,
    /// Legacy `.lzma` ("LZMA alone") stream.
    Lzma,
    /// Zstandard frame.
    Zstd,
    /// bzip2: recognised, not supported.
    Bzip2,
    /// LZO as wrapped by lzop: recognised, not supported.
    Lzo,
    /// LZ4 legacy frame: recognised, not supported.
    Lz4,
}

impl Compression {
    /// Recognises the method from the first bytes of a payload.
    pub fn detect(payload: &[u8]) -> Option<Self> {
        const MAGICS: [(&[u8], Compression); 7] = [
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0x1f, 0x9e], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"BZh", Compression::Bzip2),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
        ];
        const LZ4_LEGACY: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
        MAGICS
            .iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|&(_, method)| method)
            .or_else(|| payload.starts_with(&LZ4_LEGACY).then_some(Compression::Lz4))
    }

    /// Lower-case name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Expands `payload` compressed with `method`, to at most `limit` bytes. Data after the
/// first complete stream (Linux appends the uncompressed size) is ignored.
///
/// # Errors
/// [`ImageError::UnsupportedCompression`] for methods not implemented,
/// [`ImageError::Decompress`] when the stream is corrupt, [`ImageError::TooLarge`] past
/// `limit`.
pub fn decompress(
    method: Compression,
    payload: &[u8],
    limit: usize,
) -> Result<Vec<u8>, ImageError> {
    let out = match method {
        Compression::Gzip => read_bounded(method, flate2::read::GzDecoder::new(payload), limit)?,
        Compression::Zstd => {
            let reader = ruzstd::decoding::StreamingDecoder::new(payload).map_err(|e| {
                ImageError::Decompress {
                    method,
                    source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                }
            })?;
            read_bounded(method, reader, limit)?
        }
        Compression::Xz | Compression::Lzma => {
            let stream = if method == Compression::Xz {
                // No CONCATENATED flag: decoding stops at the end of the first stream.
                xz2::stream::Stream::new_stream_decoder(u64::MAX, 0)
            } else {
                xz2::stream::Stream::new_lzma_decoder(u64::MAX)
            };
            let stream = stream.map_err(|e| ImageError::Decompress {
                method,
                source: e.into(),
            })?;
            liblzma_bounded(method, stream, payload, limit)?
        }
        Compression::Bzip2 | Compression::Lzo | Compression::Lz4 => {
            return Err(ImageError::UnsupportedCompression {
                method: method.name(),
            })
        }
    };
    if out.is_empty() {
        return Err(ImageError::Decompress {
            method,
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "the stream holds no data"),
        });
    }
    Ok(out)
}

/// Reads a decoder to its end, failing once more than `limit` bytes come out.
fn read_bounded(
    method: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|source| ImageError::Decompress { method, source })?;
    if out.len() > limit {
        return Err(ImageError::TooLarge { method, limit });
    }
    Ok(out)
}

/// Drives liblzma directly: its `Read` adaptors treat bytes after the end of the stream
/// as corruption, and Linux appends the uncompressed size there.
fn liblzma_bounded(
    method: Compression,
    mut stream: xz2::stream::Stream,
    payload: &[u8],
    limit: usize,
) -> Result<Vec<u8>, ImageError> {
    const FIRST_CHUNK: usize = 1 << 20;
    let mut out: Vec<u8> = Vec::with_capacity(FIRST_CHUNK.min(limit.saturating_add(1)));
    let mut input = payload;
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(ImageError::TooLarge { method, limit });
            }
            // Grow geometrically, never past one byte over the bound.
            let room = out.len().max(FIRST_CHUNK).min(limit + 1 - out.len());
            out.reserve_exact(room);
        }
        let (in_before, out_before) = (stream.total_in(), out.len());
        let status = stream
            .process_vec(input, &mut out, xz2::stream::Action::Run)
            .map_err(|e| ImageError::Decompress {
                method,
                source: e.into(),
            })?;
        let consumed = usize::try_from(stream.total_in() - in_before).unwrap_or(usize::MAX);
        input = input.get(consumed..).unwrap_or_default();
        if out.len() > limit {
            return Err(ImageError::TooLarge { method, limit });
        }
        if status == xz2::stream::Status::StreamEnd {
            return Ok(out);
        }
        if consumed == 0 && out.len() == out_before && out.len() < out.capacity() {
            return Err(ImageError::Decompress {
                method,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ends before its end marker",
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_magics() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(b"\xfd7zXZ\0\0"), Some(Compression::Xz));
        assert_eq!(
            Compression::detect(&[0x5d, 0, 0, 0x80]),
            Some(Compression::Lzma)
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"BZh91AY"), Some(Compression::Bzip2));
        assert_eq!(Compression::detect(b"\x89LZO\0"), Some(Compression::Lzo));
        assert_eq!(
            Compression::detect(&[0x02, 0x21, 0x4c, 0x18]),
            Some(Compression::Lz4)
        );
        assert_eq!(Compression::detect(b"\x7fELF"), None);
        assert_eq!(Compression::detect(&[]), None);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn round_trips_and_ignores_trailing_size() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut gz = gzip(&data);
        let isize = u32::try_from(data.len()).unwrap().to_le_bytes();
        gz.extend_from_slice(&isize);
        assert_eq!(decompress(Compression::Gzip, &gz, 1 << 20).unwrap(), data);

        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&data[..], 6)
            .read_to_end(&mut xz)
            .unwrap();
        xz.extend_from_slice(&isize);
        assert_eq!(decompress(Compression::Xz, &xz, 1 << 20).unwrap(), data);
    }

    #[test]
    fn bounds_the_output() {
        let gz = gzip(&vec![0u8; 100_000]);
        assert!(matches!(
            decompress(Compression::Gzip, &gz, 99_999),
            Err(ImageError::TooLarge { limit: 99_999, .. })
        ));
        assert_eq!(
            decompress(Compression::Gzip, &gz, 100_000).unwrap().len(),
            100_000
        );
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&[0u8; 3_000_000][..], 1)
            .read_to_end(&mut xz)
            .unwrap();
        assert!(matches!(
            decompress(Compression::Xz, &xz, 2_999_999),
            Err(ImageError::TooLarge {
                limit: 2_999_999,
                ..
            })
        ));
        assert_eq!(
            decompress(Compression::Xz, &xz, 3_000_000).unwrap().len(),
            3_000_000
        );
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let mut gz = gzip(&[1u8; 4096]);
        let mid = gz.len() / 2;
        gz.truncate(mid);
        for method in [
            Compression::Gzip,
            Compression::Xz,
            Compression::Lzma,
            Compression::Zstd,
        ] {
            assert!(matches!(
                decompress(method, &gz, 1 << 20),
                Err(ImageError::Decompress { .. })
            ));
        }
        assert!(matches!(
            decompress(Compression::Lz4, &gz, 1 << 20),
            Err(ImageError::UnsupportedCompression { method: "lz4" })
        ));
    }
}
