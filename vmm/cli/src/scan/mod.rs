//! `vmm scan`: the census of sensitive instructions in a guest code image, as the
//! rewriter would find them before the code first runs (ARCHITECTURE.md §5).
//!
//! * [`scan_image`] runs the rewriter's region scan over every executable region.
//! * [`report`] turns a scan into the table or JSON the command prints.
//! * [`truth`] measures the scanner's instruction boundaries against a linear
//!   disassembly of symbolised functions.

pub mod report;
pub mod truth;

use std::path::{Path, PathBuf};

use rewriter::{Census, RegionScan};
use thiserror::Error;

use crate::image::{self, Image, LoadError};
use vmm::addr::GuestLinear;

pub use report::Report;
pub use truth::Truth;

/// What `vmm scan` was asked for.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Load the file as raw code at this address.
    pub base: Option<GuestLinear>,
    /// Measure boundaries against the symbols' ground truth.
    pub truth: bool,
    /// List this many symbols with the most patch sites.
    pub top: Option<usize>,
}

/// Why `vmm scan` could not produce a report.
#[derive(Debug, Error)]
pub enum ScanError {
    /// The image could not be read or parsed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// `--truth` on an image without the function symbols ground truth is built from.
    #[error(
        "{}: no function symbols with a size (STT_FUNC with st_size) in executable sections; \
         --truth needs them as ground truth",
        path.display()
    )]
    NoFunctionSymbols {
        /// The path given.
        path: PathBuf,
    },
}

impl ScanError {
    /// Whether the error is about how the command was invoked rather than the file.
    pub fn is_usage(&self) -> bool {
        match self {
            ScanError::Load(e) => e.is_usage(),
            ScanError::NoFunctionSymbols { .. } => false,
        }
    }
}

/// An image together with the rewriter's view of each of its regions.
#[derive(Debug)]
pub struct ImageScan<'a> {
    /// The image scanned.
    pub image: &'a Image,
    /// One scan per region of `image.regions`, in the same order.
    pub regions: Vec<RegionScan>,
    /// The sum of the regions' censuses.
    pub census: Census,
}

/// Scans every executable region of `image` from its entry points.
pub fn scan_image(image: &Image) -> ImageScan<'_> {
    let mut census = Census::default();
    let regions = image
        .regions
        .iter()
        .map(|region| {
            let entries: Vec<u32> = region.entries.iter().map(|e| e.raw()).collect();
            let scan = rewriter::scan_region(&region.bytes, region.base.raw(), &entries);
            census.add(&Census::from_region(&scan));
            scan
        })
        .collect();
    ImageScan {
        image,
        regions,
        census,
    }
}

/// Loads the image at `path`, scans it and builds the report `options` ask for.
///
/// # Errors
/// [`ScanError::Load`] when the file is unusable, [`ScanError::NoFunctionSymbols`] when
/// `--truth` is asked of an image without sized function symbols.
pub fn run(path: &Path, options: &ScanOptions) -> Result<Report, ScanError> {
    let image = image::load(path, options.base)?;
    let scan = scan_image(&image);
    let truth = if options.truth {
        Some(
            truth::measure(&scan).ok_or_else(|| ScanError::NoFunctionSymbols {
                path: path.to_owned(),
            })?,
        )
    } else {
        None
    };
    Ok(Report::new(path, &scan, options.top, truth))
}
