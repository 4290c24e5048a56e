//! What `vmm scan` prints: a census table for people, or one JSON object for tools.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;

use rewriter::{Action, Class};
use serde::Serialize;

use super::{ImageScan, Truth};
use crate::image::BzImageInfo;
use vmm::addr::GuestLinear;

/// The whole result of one scan.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The path scanned, as given.
    pub file: String,
    /// The format recognised: "elf32", "bzimage" or "raw".
    pub format: &'static str,
    /// The bzImage header and payload, for bzImages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bzimage: Option<BzImageReport>,
    /// Executable bytes scanned.
    pub bytes: u64,
    /// Instructions decoded.
    pub instructions: u64,
    /// Bytes where no valid instruction could be decoded.
    pub invalid_bytes: u64,
    /// Reached instruction starts that lie inside another reached instruction.
    pub overlapping_starts: usize,
    /// Symbols naming code (functions and labels in executable sections).
    pub symbols: usize,
    /// Each executable region scanned.
    pub regions: Vec<RegionReport>,
    /// Instructions per class name, innocuous ones included.
    pub census: BTreeMap<&'static str, u64>,
    /// Instructions per action name ("none", "patch", "trap").
    pub actions: BTreeMap<&'static str, u64>,
    /// Symbols with the most patch sites, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<TopSymbol>>,
    /// Boundary accuracy against the symbols' ground truth, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<Truth>,
    /// Every instruction that must be patched or that traps, by address.
    pub sites: Vec<SiteReport>,
}

/// The bzImage facts a reader of the report wants.
#[derive(Clone, Debug, Serialize)]
pub struct BzImageReport {
    /// Boot protocol version, "major.minor".
    pub protocol: String,
    /// Compression method of the payload.
    pub compression: &'static str,
    /// File offset of the payload.
    pub payload_offset: usize,
    /// Compressed payload length.
    pub payload_length: usize,
    /// Size of the expanded vmlinux.
    pub vmlinux_bytes: usize,
}

impl From<&BzImageInfo> for BzImageReport {
    fn from(info: &BzImageInfo) -> Self {
        Self {
            protocol: info.protocol_string(),
            compression: info.compression.name(),
            payload_offset: info.payload_offset,
            payload_length: info.payload_length,
            vmlinux_bytes: info.decompressed_size,
        }
    }
}

/// One executable region.
#[derive(Clone, Debug, Serialize)]
pub struct RegionReport {
    /// Section or segment name.
    pub name: String,
    /// Guest linear address of its first byte.
    pub base: String,
    /// Its length.
    pub bytes: usize,
    /// Entry points recursive descent started from.
    pub entries: usize,
    /// Instructions decoded in it.
    pub instructions: usize,
}

/// One sensitive instruction.
#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    /// Guest linear address, "0x…".
    pub address: String,
    /// Class name.
    pub class: &'static str,
    /// "patch" or "trap".
    pub action: &'static str,
    /// Instruction length in bytes.
    pub length: u8,
    /// `name+0xoff` when a symbol holds the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
}

/// A symbol and how many patch sites it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopSymbol {
    /// Symbol name.
    pub symbol: String,
    /// Patch sites inside it.
    pub patch_sites: u64,
}

impl Report {
    /// Builds the report of `scan` of the file at `path`; `top` asks for that many
    /// symbols ranked by patch sites.
    pub fn new(
        path: &Path,
        scan: &ImageScan<'_>,
        top: Option<usize>,
        truth: Option<Truth>,
    ) -> Self {
        let image = scan.image;
        let mut sites = Vec::new();
        let mut per_symbol: HashMap<&str, u64> = HashMap::new();
        for site in scan.regions.iter().flat_map(|r| &r.sites) {
            let action = site.class.action();
            if action == Action::None {
                continue;
            }
            let symbol = image.symbols.lookup(GuestLinear(site.address));
            if let (Some(sym), Action::Patch) = (symbol, action) {
                *per_symbol.entry(sym.symbol.name.as_str()).or_default() += 1;
            }
            sites.push(SiteReport {
                address: format!("{:#x}", site.address),
                class: site.class.name(),
                action: action.name(),
                length: site.length,
                symbol: symbol.map(|s| s.to_string()),
            });
        }
        let top = top.map(|n| {
            let mut ranked: Vec<TopSymbol> = per_symbol
                .into_iter()
                .map(|(symbol, patch_sites)| TopSymbol {
                    symbol: symbol.to_owned(),
                    patch_sites,
                })
                .collect();
            ranked.sort_by(|a, b| {
                b.patch_sites
                    .cmp(&a.patch_sites)
                    .then(a.symbol.cmp(&b.symbol))
            });
            ranked.truncate(n);
            ranked
        });
        let regions = image
            .regions
            .iter()
            .zip(&scan.regions)
            .map(|(region, rs)| RegionReport {
                name: region.name.clone(),
                base: format!("{:#x}", region.base.raw()),
                bytes: region.bytes.len(),
                entries: region.entries.len(),
                instructions: rs.starts.len(),
            })
            .collect();
        Report {
            file: path.display().to_string(),
            format: image.format.name(),
            bzimage: image.bzimage.as_ref().map(BzImageReport::from),
            bytes: scan.census.bytes,
            instructions: scan.census.instructions,
            invalid_bytes: scan.census.invalid_bytes,
            overlapping_starts: scan.regions.iter().map(|r| r.overlaps.len()).sum(),
            symbols: image.symbols.symbols().len(),
            regions,
            census: scan
                .census
                .classes
                .iter()
                .map(|(c, &n)| (c.name(), n))
                .collect(),
            actions: scan
                .census
                .actions
                .iter()
                .map(|(a, &n)| (a.name(), n))
                .collect(),
            top,
            truth,
            sites,
        }
    }

    /// Sensitive classes found, patch classes first, then by count (descending) and
    /// name.
    fn ranked_classes(&self) -> Vec<(Class, u64)> {
        let mut rows: Vec<(Class, u64)> = self
            .census
            .iter()
            .filter_map(|(name, &n)| Class::from_name(name).map(|c| (c, n)))
            .filter(|(c, _)| c.action() != Action::None)
            .collect();
        // Action orders None < Patch < Trap, so patch classes come first.
        rows.sort_by(|a, b| {
            (a.0.action().cmp(&b.0.action()))
                .then(b.1.cmp(&a.1))
                .then(a.0.name().cmp(b.0.name()))
        });
        rows
    }

    /// Writes the census table.
    ///
    /// # Errors
    /// Any error of `out`.
    pub fn write_table(&self, mut out: impl Write) -> io::Result<()> {
        writeln!(out, "file          {} ({})", self.file, self.format)?;
        if let Some(bz) = &self.bzimage {
            writeln!(
                out,
                "bzImage       boot protocol {}, {} payload of {} bytes, vmlinux {} bytes",
                bz.protocol, bz.compression, bz.payload_length, bz.vmlinux_bytes
            )?;
        }
        let names: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
        writeln!(
            out,
            "regions       {} ({})",
            self.regions.len(),
            names.join(", ")
        )?;
        writeln!(out, "symbols       {}", self.symbols)?;
        writeln!(out, "bytes         {}", self.bytes)?;
        writeln!(out, "instructions  {}", self.instructions)?;
        writeln!(out, "invalid bytes {}", self.invalid_bytes)?;
        writeln!(out)?;
        writeln!(out, "{:<16} {:<6} {:>10}", "class", "action", "count")?;
        for (class, n) in self.ranked_classes() {
            writeln!(
                out,
                "{:<16} {:<6} {:>10}",
                class.name(),
                class.action().name(),
                n
            )?;
        }
        writeln!(out)?;
        writeln!(out, "{:<23} {:>10}", "action", "count")?;
        for action in [
            Action::Patch,
            Action::Trap,
            Action::Conditional,
            Action::None,
        ] {
            let n = self.actions.get(action.name()).copied().unwrap_or(0);
            writeln!(out, "{:<23} {:>10}", action.name(), n)?;
        }
        if let Some(top) = &self.top {
            writeln!(out)?;
            if self.symbols == 0 {
                writeln!(out, "top symbols: none, the image carries no symbols")?;
            } else if top.is_empty() {
                writeln!(out, "top symbols: none, no symbol holds a patch site")?;
            } else {
                writeln!(out, "{:<40} {:>11}", "symbol", "patch sites")?;
                for t in top {
                    writeln!(out, "{:<40} {:>11}", t.symbol, t.patch_sites)?;
                }
            }
        }
        if let Some(t) = &self.truth {
            writeln!(out)?;
            writeln!(
                out,
                "truth         {} functions ({} outside code), {} true starts",
                t.functions, t.functions_outside_code, t.true_starts
            )?;
            writeln!(
                out,
                "              scanner starts {}, matched {}",
                t.scanner_starts, t.matched
            )?;
            writeln!(
                out,
                "              precision {:.4}%, recall {:.4}%",
                t.precision * 100.0,
                t.recall * 100.0
            )?;
            let hex = |v: &[GuestLinear]| {
                v.iter()
                    .map(|a| format!("{:#x}", a.raw()))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            if !t.false_starts.is_empty() {
                writeln!(out, "              false starts: {}", hex(&t.false_starts))?;
            }
            if !t.missed_starts.is_empty() {
                writeln!(
                    out,
                    "              missed starts: {}",
                    hex(&t.missed_starts)
                )?;
            }
        }
        Ok(())
    }

    /// Writes the report as one JSON object followed by a newline.
    ///
    /// # Errors
    /// Any error of `out`.
    pub fn write_json(&self, mut out: impl Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut out, self)?;
        writeln!(out)
    }
}
