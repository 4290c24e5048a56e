//! Raw code: bytes with no container, placed at a base address the user names.

use super::{CodeRegion, Format, Image, ImageError, SymbolTable};
use vmm::addr::GuestLinear;

/// Wraps `bytes` as one region at `base`, entered at its first byte.
///
/// # Errors
/// [`ImageError::RawOutOfRange`] when the bytes would cross the 4 GiB line.
pub fn parse(bytes: Vec<u8>, base: GuestLinear) -> Result<Image, ImageError> {
    if u64::from(base.raw()) + bytes.len() as u64 > 1 << 32 {
        return Err(ImageError::RawOutOfRange {
            base,
            len: bytes.len(),
        });
    }
    Ok(Image {
        format: Format::Raw,
        regions: vec![CodeRegion {
            name: "raw".into(),
            base,
            bytes,
            entries: vec![base],
        }],
        symbols: SymbolTable::default(),
        bzimage: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn must_fit_below_4gib() {
        assert!(parse(vec![0x90; 16], GuestLinear(0xffff_fff0)).is_ok());
        assert!(matches!(
            parse(vec![0x90; 17], GuestLinear(0xffff_fff0)),
            Err(ImageError::RawOutOfRange { len: 17, .. })
        ));
    }
}
