//! Parser for `tests.cfg`, the kvm-unit-tests `unittests.cfg` format:
//!
//! ```text
//! # comment
//! [name]
//! file = name.elf
//! append = kernel command line
//! extra_params = -append 'x'   (arguments for the machine, as in kvm-unit-tests)
//! groups = a b
//! timeout = 30
//! expect_exit = 1
//! disks = 4M 130G
//! smp = 2
//! ```
//!
//! `smp` gives the machine that many processors (`--smp` for the monitor, `-smp` for
//! QEMU), as kvm-unit-tests' key does.
//!
//! `disks` gives the kernel IDE drives: one raw image per size (bytes, or with a K, M or G
//! suffix; whole 512-byte sectors), the first the primary channel's master, the second its
//! slave. The runner makes fresh images for every run, filled as [`crate::disk_image`]
//! says, and passes them to the monitor (`--disk`) and to QEMU (`-drive if=ide`).

/// How one test kernel is run and what it must end with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEntry {
    /// Section name, `[name]`.
    pub name: String,
    /// Kernel file name (`<guest>.elf`).
    pub file: String,
    /// Kernel command line (Multiboot cmdline).
    pub append: String,
    /// Extra machine arguments, passed through to the runner.
    pub extra_params: String,
    /// Groups the test belongs to.
    pub groups: Vec<String>,
    /// Seconds before the run counts as TIMEOUT.
    pub timeout: u32,
    /// Host exit status the run must end with: `(code << 1) | 1` of the debug-exit port.
    pub expect_exit: i32,
    /// Sizes in bytes of the IDE disk images the kernel gets: master, then slave.
    pub disks: Vec<u64>,
    /// Processors (1 unless `smp` says).
    pub smp: u8,
}

/// Drives on the primary IDE channel, the most `disks` may list.
pub const MAX_DISKS: usize = 2;

/// Default timeout in seconds, as in kvm-unit-tests.
pub const DEFAULT_TIMEOUT: u32 = 90;
/// Status of a guest that wrote 0 (all passed) to the debug-exit port.
pub const DEFAULT_EXPECT_EXIT: i32 = 1;

/// What is wrong with a `tests.cfg`, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A `key = value` line before the first `[section]`.
    #[error("line {line}: `{text}` is outside any [test] section")]
    OutsideSection { line: usize, text: String },
    /// A line that is neither a section, a comment nor `key = value`.
    #[error("line {line}: expected `[name]` or `key = value`, found `{text}`")]
    Syntax { line: usize, text: String },
    /// A key this format does not have.
    #[error("line {line}: unknown key `{key}`")]
    UnknownKey { line: usize, key: String },
    /// A number that does not parse.
    #[error("line {line}: `{key}` must be an integer, found `{value}`")]
    BadNumber {
        line: usize,
        key: String,
        value: String,
    },
    /// Two sections with the same name.
    #[error("line {line}: test [{name}] is defined twice")]
    Duplicate { line: usize, name: String },
    /// A `disks` size that is no whole number of sectors, or too many disks.
    #[error("line {line}: `disks` must list at most two sizes of whole 512-byte sectors (such as 1M or 4096), found `{value}`")]
    BadDisks { line: usize, value: String },
    /// A section without `file =`.
    #[error("test [{name}] has no `file =`")]
    MissingFile { name: String },
}

struct Partial {
    name: String,
    file: Option<String>,
    entry: TestEntry,
}

fn finish(p: Partial) -> Result<TestEntry, ConfigError> {
    let file = p.file.ok_or_else(|| ConfigError::MissingFile {
        name: p.name.clone(),
    })?;
    Ok(TestEntry { file, ..p.entry })
}

/// Parses `tests.cfg` text into its entries, in file order.
///
/// # Errors
/// [`ConfigError`] naming the offending line.
pub fn parse_config(text: &str) -> Result<Vec<TestEntry>, ConfigError> {
    let mut entries: Vec<TestEntry> = Vec::new();
    let mut current: Option<Partial> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some(p) = current.take() {
                entries.push(finish(p)?);
            }
            let name = name.trim().to_string();
            if entries.iter().any(|e| e.name == name) {
                return Err(ConfigError::Duplicate {
                    line: line_no,
                    name,
                });
            }
            current = Some(Partial {
                name: name.clone(),
                file: None,
                entry: TestEntry {
                    name,
                    file: String::new(),
                    append: String::new(),
                    extra_params: String::new(),
                    groups: Vec::new(),
                    timeout: DEFAULT_TIMEOUT,
                    expect_exit: DEFAULT_EXPECT_EXIT,
                    disks: Vec::new(),
                    smp: 1,
                },
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                line: line_no,
                text: line.to_string(),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(p) = current.as_mut() else {
            return Err(ConfigError::OutsideSection {
                line: line_no,
                text: line.to_string(),
            });
        };
        let number = |v: &str| -> Result<i64, ConfigError> {
            v.parse().map_err(|_| ConfigError::BadNumber {
                line: line_no,
                key: key.to_string(),
                value: v.to_string(),
            })
        };
        let bad = |v: &str| ConfigError::BadNumber {
            line: line_no,
            key: key.to_string(),
            value: v.to_string(),
        };
        match key {
            "file" => p.file = Some(value.to_string()),
            "append" => p.entry.append = value.to_string(),
            "extra_params" => p.entry.extra_params = value.to_string(),
            "groups" => p.entry.groups = value.split_whitespace().map(String::from).collect(),
            "timeout" => {
                // kvm-unit-tests allows a unit suffix; seconds are the only one used here.
                let v = value.strip_suffix('s').unwrap_or(value);
                p.entry.timeout = u32::try_from(number(v)?).map_err(|_| bad(value))?;
            }
            "disks" => {
                let bad = || ConfigError::BadDisks {
                    line: line_no,
                    value: value.to_string(),
                };
                let sizes = value
                    .split_whitespace()
                    .map(parse_size)
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(bad)?;
                if sizes.len() > MAX_DISKS {
                    return Err(bad());
                }
                p.entry.disks = sizes;
            }
            "smp" => {
                p.entry.smp = u8::try_from(number(value)?)
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad(value))?;
            }
            "expect_exit" => {
                p.entry.expect_exit = i32::try_from(number(value)?).map_err(|_| bad(value))?;
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    line: line_no,
                    key: key.to_string(),
                })
            }
        }
    }
    if let Some(p) = current.take() {
        entries.push(finish(p)?);
    }
    Ok(entries)
}

/// A disk size: bytes, or a number with a K, M or G suffix (binary units); a non-zero
/// whole number of 512-byte sectors.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 10),
        (i, 'M' | 'm') => (&text[..i], 20),
        (i, 'G' | 'g') => (&text[..i], 30),
        _ => (text, 0),
    };
    let size = digits.parse::<u64>().ok()?.checked_mul(1 << shift)?;
    (size != 0 && size.is_multiple_of(512)).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_with_defaults() {
        let cfg = "# header\n\n[a]\nfile = a.elf\ngroups = x y\ntimeout = 10s\n\
                   append = quiet=1\n\n[b]\nfile=b.elf\nexpect_exit = 3\nextra_params = -m 64\n";
        let e = parse_config(cfg).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "a");
        assert_eq!(e[0].file, "a.elf");
        assert_eq!(e[0].groups, vec!["x", "y"]);
        assert_eq!(e[0].timeout, 10);
        assert_eq!(
            e[0].append, "quiet=1",
            "only the first '=' separates key and value"
        );
        assert_eq!(e[0].expect_exit, DEFAULT_EXPECT_EXIT);
        assert_eq!(e[1].timeout, DEFAULT_TIMEOUT);
        assert_eq!(e[1].expect_exit, 3);
        assert_eq!(e[1].extra_params, "-m 64");
        assert!(e[0].disks.is_empty());
    }

    #[test]
    fn smp_is_a_processor_count() {
        let e = parse_config("[a]\nfile = a.elf\nsmp = 4\n[b]\nfile = b.elf\n").unwrap();
        assert_eq!((e[0].smp, e[1].smp), (4, 1));
        for bad in ["0", "300", "two"] {
            assert!(
                parse_config(&format!("[a]\nfile = a.elf\nsmp = {bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn disks_are_sizes_of_whole_sectors() {
        let e = parse_config("[a]\nfile = a.elf\ndisks = 1M 130G\n").unwrap();
        assert_eq!(e[0].disks, vec![1 << 20, 130 << 30]);
        for bad in ["1M 2M 3M", "513", "0", "lots", "1T"] {
            assert_eq!(
                parse_config(&format!("[a]\nfile = a.elf\ndisks = {bad}\n")),
                Err(ConfigError::BadDisks {
                    line: 3,
                    value: bad.into()
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_malformed_input_with_line_numbers() {
        assert_eq!(
            parse_config("file = a.elf\n"),
            Err(ConfigError::OutsideSection {
                line: 1,
                text: "file = a.elf".into()
            })
        );
        assert_eq!(
            parse_config("[a]\nfile = a.elf\nsmp 2\n"),
            Err(ConfigError::Syntax {
                line: 3,
                text: "smp 2".into()
            })
        );
        assert_eq!(
            parse_config("[a]\nfile = a.elf\ncolour = red\n"),
            Err(ConfigError::UnknownKey {
                line: 3,
                key: "colour".into()
            })
        );
        assert_eq!(
            parse_config("[a]\nfile = a.elf\ntimeout = soon\n"),
            Err(ConfigError::BadNumber {
                line: 3,
                key: "timeout".into(),
                value: "soon".into()
            })
        );
        assert_eq!(
            parse_config("[a]\nfile = a.elf\n[a]\nfile = b.elf\n"),
            Err(ConfigError::Duplicate {
                line: 3,
                name: "a".into()
            })
        );
        assert_eq!(
            parse_config("[a]\ngroups = x\n[b]\nfile = b.elf\n"),
            Err(ConfigError::MissingFile { name: "a".into() })
        );
    }
}
