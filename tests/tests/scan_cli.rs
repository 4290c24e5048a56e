//! `vmm scan` as a user runs it: the real binary on a symbolised ELF built from
//! tests/scan/sensitive.c, on raw code, on bzImages wrapped around that ELF, on bad
//! inputs, and on Debian's i386 kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use goblin::elf::Elf;
use iced_x86::{Decoder, DecoderOptions};
use serde_json::Value;
use support::{run_tool, Run};

/// The sensitive instructions of each function of sensitive.c, per class. GCC ends each
/// naked function with a `ud2` of its own.
const EXPECTED: &[(&str, &[(&str, u64)])] = &[
    ("read_flags", &[("pushf", 1)]),
    ("write_flags", &[("popf", 1)]),
    ("save_tables", &[("sgdt", 1), ("sidt", 1)]),
    ("machine_status", &[("smsw", 1)]),
    ("task_registers", &[("sldt", 1), ("str", 1)]),
    (
        "check_selector",
        &[("lar", 1), ("lsl", 1), ("verr", 1), ("verw", 1)],
    ),
    (
        "reload_data_segment",
        &[("mov_from_sreg", 1), ("mov_to_sreg", 1)],
    ),
    ("segment_stack", &[("push_sreg", 2), ("pop_sreg", 2)]),
    ("load_far_pointer", &[("lgs", 1)]),
    (
        "far_transfers",
        &[("far_jmp", 1), ("far_call", 1), ("far_ret", 1), ("ud", 1)],
    ),
    ("interrupt_return", &[("iret", 1), ("ud", 1)]),
    (
        "port_io",
        &[("cli", 1), ("in", 2), ("out", 2), ("sti", 1), ("hlt", 1)],
    ),
    ("system_calls", &[("int", 1), ("sysenter", 1)]),
    ("asm_routine", &[("pushf", 1), ("cli", 1), ("popf", 1)]),
];

/// Classes whose action is "trap" among the expected ones; all others are "patch".
const TRAP_CLASSES: &[&str] = &["cli", "sti", "hlt", "in", "out", "int", "ud"];

/// Seconds one scan may take (a Linux kernel's bzImage is the largest input).
const SCAN_LIMIT_S: u32 = 300;

fn vmm(args: &[&str]) -> Run {
    support::run_vmm(SCAN_LIMIT_S, args)
}

fn stdout(out: &Run) -> String {
    assert!(
        out.success(),
        "vmm failed with {:?}: {}",
        out.status,
        out.stderr
    );
    out.stdout.clone()
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&stdout(&vmm(&all))).expect("--json prints one JSON object")
}

fn scratch() -> PathBuf {
    support::scratch_dir("scan_cli")
}

/// Builds sensitive.c into a linked i386 ELF once per test run.
fn fixture() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scan/sensitive.c");
        let dir = scratch();
        let obj = dir.join("sensitive.o");
        let elf = dir.join("sensitive.elf");
        run_tool(
            Command::new("gcc")
                .args([
                    "-m32",
                    "-ffreestanding",
                    "-nostdlib",
                    "-fno-pic",
                    "-O2",
                    "-fno-asynchronous-unwind-tables",
                    "-fno-stack-protector",
                    "-c",
                ])
                .arg(&src)
                .arg("-o")
                .arg(&obj),
        );
        run_tool(
            Command::new("ld")
                .args(["-m", "elf_i386", "-e", "start", "-o"])
                .arg(&elf)
                .arg(&obj),
        );
        elf
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn expected_census() -> BTreeMap<String, u64> {
    let mut census = BTreeMap::new();
    for (_, classes) in EXPECTED {
        for &(class, n) in *classes {
            *census.entry(class.to_owned()).or_default() += n;
        }
    }
    census
}

/// Expected (patch, trap) totals.
fn action_totals() -> (u64, u64) {
    let census = expected_census();
    let trap: u64 = census
        .iter()
        .filter(|(c, _)| TRAP_CLASSES.contains(&c.as_str()))
        .map(|(_, n)| n)
        .sum();
    (census.values().sum::<u64>() - trap, trap)
}

/// The census without innocuous instructions.
fn sensitive_census(report: &Value) -> BTreeMap<String, u64> {
    report["census"]
        .as_object()
        .expect("census is an object")
        .iter()
        .filter(|(class, _)| *class != "innocuous")
        .map(|(class, n)| (class.clone(), n.as_u64().expect("counts are numbers")))
        .collect()
}

fn hex(v: &Value) -> u32 {
    let s = v.as_str().expect("addresses are strings");
    u32::from_str_radix(s.strip_prefix("0x").expect("0x prefix"), 16).expect("hex address")
}

#[test]
fn census_counts_every_class_of_the_fixture() {
    let elf = fixture();
    let report = json(&["scan", path_str(elf)]);
    assert_eq!(report["format"], "elf32");
    assert_eq!(report["file"], path_str(elf));
    // The 14 functions and one assembly label of sensitive.c; ld's own labels lie
    // outside .text.
    assert_eq!(report["symbols"], 15);
    assert_eq!(sensitive_census(&report), expected_census());

    let (patch, trap) = action_totals();
    assert_eq!(report["actions"]["patch"], patch);
    assert_eq!(report["actions"]["trap"], trap);
    let all: u64 = report["census"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        report["instructions"], all,
        "every instruction has one class"
    );
    assert_eq!(report["actions"]["none"], report["census"]["innocuous"]);

    let data = std::fs::read(elf).unwrap();
    let parsed = Elf::parse(&data).unwrap();
    let text = parsed
        .section_headers
        .iter()
        .find(|s| parsed.shdr_strtab.get_at(s.sh_name) == Some(".text"))
        .expect("a .text section");
    assert_eq!(report["bytes"], text.sh_size, "only .text is executable");
}

#[test]
fn sites_name_their_function_and_decode_at_their_address() {
    let elf = fixture();
    let data = std::fs::read(elf).unwrap();
    let parsed = Elf::parse(&data).unwrap();
    let symbol = |name: &str| {
        parsed
            .syms
            .iter()
            .find(|s| parsed.strtab.get_at(s.st_name) == Some(name))
            .unwrap_or_else(|| panic!("symbol {name}"))
    };
    let text = parsed
        .section_headers
        .iter()
        .find(|s| parsed.shdr_strtab.get_at(s.sh_name) == Some(".text"))
        .unwrap();
    let file_offset =
        |addr: u32| usize::try_from(u64::from(addr) - text.sh_addr + text.sh_offset).unwrap();

    let report = json(&["scan", path_str(elf)]);
    let sites = report["sites"].as_array().expect("sites is an array");
    let mut found: BTreeMap<(String, String), u64> = BTreeMap::new();
    for site in sites {
        let class = site["class"].as_str().unwrap().to_owned();
        let action = if TRAP_CLASSES.contains(&class.as_str()) {
            "trap"
        } else {
            "patch"
        };
        assert_eq!(site["action"], action, "{site}");
        let attributed = site["symbol"]
            .as_str()
            .unwrap_or_else(|| panic!("no symbol: {site}"));
        let (name, off) = attributed.split_once("+0x").expect("name+0xoff");
        let off = u64::from_str_radix(off, 16).unwrap();
        let sym = symbol(name);
        let address = hex(&site["address"]);
        assert_eq!(u64::from(address), sym.st_value + off, "{site}");
        // A label has no size: it extends to the next symbol.
        assert!(
            sym.st_size == 0 || off < sym.st_size,
            "{site} lies inside {name}"
        );

        let at = file_offset(address);
        let mut decoder =
            Decoder::with_ip(32, &data[at..], u64::from(address), DecoderOptions::NONE);
        let instr = decoder.decode();
        assert!(!instr.is_invalid(), "{site}");
        assert_eq!(site["length"], instr.len() as u64, "{site}");
        *found.entry((name.to_owned(), class)).or_default() += 1;
    }
    let expected: BTreeMap<(String, String), u64> = EXPECTED
        .iter()
        .flat_map(|(f, classes)| {
            classes
                .iter()
                .map(|&(c, n)| ((f.to_string(), c.to_string()), n))
        })
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn table_lists_classes_actions_and_top_symbols() {
    let elf = fixture();
    let table = stdout(&vmm(&["scan", path_str(elf), "--top", "2"]));
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let has = |row: &[&str]| rows.iter().any(|r| r == row);
    for (class, n) in expected_census() {
        let action = if TRAP_CLASSES.contains(&class.as_str()) {
            "trap"
        } else {
            "patch"
        };
        let n = n.to_string();
        assert!(
            has(&[class.as_str(), action, n.as_str()]),
            "row for {class} in\n{table}"
        );
    }
    let (patch, trap) = action_totals();
    assert!(has(&["patch", patch.to_string().as_str()]), "{table}");
    assert!(has(&["trap", trap.to_string().as_str()]), "{table}");
    // check_selector and segment_stack hold four patch sites each, more than any other.
    let pos = |row: &[&str]| rows.iter().position(|r| r == row);
    let first = pos(&["check_selector", "4"]).expect("check_selector ranked");
    assert_eq!(pos(&["segment_stack", "4"]), Some(first + 1), "{table}");
    assert!(
        !table.contains("far_transfers  "),
        "--top 2 lists two symbols:\n{table}"
    );

    let report = json(&["scan", path_str(elf), "--top", "3"]);
    let top = report["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[2]["symbol"], "far_transfers");
    assert_eq!(top[2]["patch_sites"], 3);
}

#[test]
fn truth_on_the_fixture_is_exact() {
    let elf = fixture();
    let report = json(&["scan", path_str(elf), "--truth"]);
    let truth = &report["truth"];
    // The assembly label has no size, so it is no ground truth.
    assert_eq!(truth["functions"], 14, "{truth}");
    assert_eq!(truth["functions_outside_code"], 0);
    assert!(truth["true_starts"].as_u64().unwrap() > 50, "{truth}");
    assert_eq!(truth["matched"], truth["true_starts"], "{truth}");
    assert_eq!(truth["scanner_starts"], truth["true_starts"], "{truth}");
    assert_eq!(truth["precision"], 1.0);
    assert_eq!(truth["recall"], 1.0);
    assert_eq!(truth["false_starts"], serde_json::json!([]));
    assert_eq!(truth["missed_starts"], serde_json::json!([]));

    let table = stdout(&vmm(&["scan", path_str(elf), "--truth"]));
    assert!(
        table.contains("precision 100.0000%, recall 100.0000%"),
        "{table}"
    );
}

/// Boundary accuracy on the repository's own guest kernels (gcc -O2, symbols kept): every
/// instruction start the scanner finds is a start of a linear disassembly from its
/// function's symbol, and none is missed.
#[test]
fn truth_on_the_guest_kernels_is_exact() {
    for guest in guests::all() {
        let report = json(&["scan", guest.path, "--truth"]);
        let truth = &report["truth"];
        println!(
            "{:<12} functions {:>3}  true starts {:>5}  precision {}  recall {}",
            guest.name,
            truth["functions"],
            truth["true_starts"],
            truth["precision"],
            truth["recall"]
        );
        assert!(
            truth["functions"].as_u64().unwrap() > 20,
            "{}: {truth}",
            guest.name
        );
        assert!(
            truth["true_starts"].as_u64().unwrap() > 1000,
            "{}: {truth}",
            guest.name
        );
        assert_eq!(truth["precision"], 1.0, "{}: {truth}", guest.name);
        assert_eq!(truth["recall"], 1.0, "{}: {truth}", guest.name);
    }
}

/// pushfd; popfd; cli; sgdt [eax]; mov ds, eax; iretd
const RAW_CODE: &[u8] = &[0x9c, 0x9d, 0xfa, 0x0f, 0x01, 0x00, 0x8e, 0xd8, 0xcf];

#[test]
fn raw_code_is_placed_at_its_base() {
    let path = scratch().join("raw.bin");
    std::fs::write(&path, RAW_CODE).unwrap();
    for base in ["0x7c00", "31744"] {
        let report = json(&["scan", path_str(&path), "--base", base]);
        assert_eq!(report["format"], "raw");
        assert_eq!(report["bytes"], RAW_CODE.len());
        assert_eq!(report["instructions"], 6);
        let sites: Vec<(u32, &str, u64)> = report["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert!(s.get("symbol").is_none(), "raw code has no symbols: {s}");
                (
                    hex(&s["address"]),
                    s["class"].as_str().unwrap(),
                    s["length"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            sites,
            [
                (0x7c00, "pushf", 1),
                (0x7c01, "popf", 1),
                (0x7c02, "cli", 1),
                (0x7c03, "sgdt", 3),
                (0x7c06, "mov_to_sreg", 2),
                (0x7c08, "iret", 1),
            ]
        );
    }
}

/// Wraps `payload` (already compressed) in a minimal bzImage setup header, protocol
/// 2.15, with one setup sector and the payload 0x100 bytes into the protected-mode code.
fn bzimage(payload: &[u8], uncompressed: usize) -> Vec<u8> {
    const PM_START: usize = 0x400;
    const PAYLOAD_OFFSET: usize = 0x100;
    let mut image = vec![0u8; PM_START + PAYLOAD_OFFSET];
    image[0x1f1] = 1;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x248..0x24c].copy_from_slice(&u32::try_from(PAYLOAD_OFFSET).unwrap().to_le_bytes());
    // Like Linux, the payload is followed by its uncompressed size.
    let with_size = payload.len() + 4;
    image[0x24c..0x250].copy_from_slice(&u32::try_from(with_size).unwrap().to_le_bytes());
    image.extend_from_slice(payload);
    image.extend_from_slice(&u32::try_from(uncompressed).unwrap().to_le_bytes());
    image
}

fn compress(method: &str, data: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    use xz2::stream::{Check, Filters, LzmaOptions, Stream};
    let lzma_options = || LzmaOptions::new_preset(6).unwrap();
    match method {
        "gzip" => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        }
        "xz" => {
            // As Linux builds it: the x86 BCJ filter in front of LZMA2.
            let mut filters = Filters::new();
            filters.x86().lzma2(&lzma_options());
            let stream = Stream::new_stream_encoder(&filters, Check::Crc32).unwrap();
            let mut out = Vec::new();
            xz2::read::XzEncoder::new_stream(data, stream)
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        "lzma" => {
            let stream = Stream::new_lzma_encoder(&lzma_options()).unwrap();
            let mut out = Vec::new();
            xz2::read::XzEncoder::new_stream(data, stream)
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        "zstd" => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
        _ => unreachable!("no such method in these tests"),
    }
}

#[test]
fn bzimage_payloads_expand_to_the_same_census() {
    let elf = fixture();
    let data = std::fs::read(elf).unwrap();
    let direct = json(&["scan", path_str(elf)]);
    for method in ["gzip", "xz", "lzma", "zstd"] {
        let path = scratch().join(format!("bzimage-{method}"));
        std::fs::write(&path, bzimage(&compress(method, &data), data.len())).unwrap();
        let report = json(&["scan", path_str(&path), "--top", "1"]);
        assert_eq!(report["format"], "bzimage", "{method}");
        assert_eq!(report["bzimage"]["compression"], method);
        assert_eq!(report["bzimage"]["protocol"], "2.15");
        assert_eq!(report["bzimage"]["vmlinux_bytes"], data.len());
        assert_eq!(report["census"], direct["census"], "{method}");
        assert_eq!(report["sites"], direct["sites"], "{method}");
        assert_eq!(report["top"][0]["symbol"], "check_selector", "{method}");
    }
}

/// Runs a scan expected to fail; returns its stderr after checking the exit status.
fn failure(args: &[&str], status: i32) -> String {
    let out = vmm(args);
    let stderr = out.stderr.clone();
    assert_eq!(out.status, Some(status), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed a report");
    stderr
}

fn assert_mentions(stderr: &str, words: &[&str]) {
    for w in words {
        assert!(stderr.contains(w), "{w:?} not in: {stderr}");
    }
}

#[test]
fn unreadable_and_unrecognised_inputs_are_named() {
    let dir = scratch();
    let missing = dir.join("does-not-exist.elf");
    let err = failure(&["scan", path_str(&missing)], 1);
    assert_mentions(&err, &[path_str(&missing), "cannot read"]);

    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&empty)], 1),
        &[path_str(&empty), "empty"],
    );

    let garbage = dir.join("garbage.bin");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(&garbage, &bytes).unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&garbage)], 2),
        &[
            path_str(&garbage),
            "not an ELF file or a Linux bzImage",
            "--base",
        ],
    );
    // The same bytes scan as raw code once a base is given.
    assert!(vmm(&["scan", path_str(&garbage), "--base", "0x1000"]).success());

    let err = failure(&["scan", path_str(&garbage), "--base", "0x1_0000_0000"], 2);
    assert_mentions(&err, &["--base", "32-bit address"]);
    let err = failure(&["scan", path_str(&garbage), "--base", "0xffffff00"], 1);
    assert_mentions(&err, &[path_str(&garbage), "do not fit below 4 GiB"]);
}

#[test]
fn corrupt_and_foreign_elf_files_are_rejected() {
    let elf = fixture();
    let data = std::fs::read(elf).unwrap();
    let truncated = scratch().join("truncated.elf");
    std::fs::write(&truncated, &data[..data.len() / 2]).unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&truncated)], 1),
        &[path_str(&truncated), "corrupt ELF"],
    );

    let header_only = scratch().join("header-only.elf");
    std::fs::write(&header_only, &data[..30]).unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&header_only)], 1),
        &[path_str(&header_only), "corrupt ELF"],
    );

    let host = Path::new("/bin/true");
    let err = failure(&["scan", path_str(host)], 1);
    assert_mentions(
        &err,
        &["/bin/true", "ELF64", "expected 32-bit little-endian i386"],
    );

    let err = failure(&["scan", path_str(elf), "--base", "0x1000"], 2);
    assert_mentions(
        &err,
        &[path_str(elf), "elf32", "--base applies only to raw code"],
    );
}

#[test]
fn corrupt_bzimages_are_rejected() {
    let data = std::fs::read(fixture()).unwrap();
    let good = bzimage(&compress("xz", &data), data.len());

    let mut flipped = good.clone();
    let mid = 0x500 + (flipped.len() - 0x500) / 2;
    for b in &mut flipped[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let path = scratch().join("bzimage-corrupt");
    std::fs::write(&path, &flipped).unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&path)], 1),
        &[path_str(&path), "bzImage payload (xz) does not decompress"],
    );

    let short = scratch().join("bzimage-short");
    std::fs::write(&short, &good[..good.len() - 100]).unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&short)], 1),
        &[
            path_str(&short),
            "corrupt bzImage",
            "payload_offset/payload_length",
        ],
    );

    // A payload that expands to something other than an ELF.
    let not_elf = bzimage(&compress("gzip", b"just text, no kernel"), 20);
    let path = scratch().join("bzimage-not-elf");
    std::fs::write(&path, &not_elf).unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&path)], 1),
        &[path_str(&path), "not a usable vmlinux", "\\x7fELF"],
    );

    let mut bzip2 = good.clone();
    bzip2[0x500..0x503].copy_from_slice(b"BZh");
    let path = scratch().join("bzimage-bzip2");
    std::fs::write(&path, &bzip2).unwrap();
    assert_mentions(
        &failure(&["scan", path_str(&path)], 1),
        &[path_str(&path), "bzip2", "not supported"],
    );
}

#[test]
fn truth_needs_function_symbols() {
    let path = scratch().join("raw-truth.bin");
    std::fs::write(&path, RAW_CODE).unwrap();
    let err = failure(&["scan", path_str(&path), "--base", "0x1000", "--truth"], 1);
    assert_mentions(&err, &[path_str(&path), "no function symbols", "--truth"]);
}

/// Debian's i386 kernel, fetched by scripts/debian-kernel.sh.
fn debian_bzimage() -> Option<PathBuf> {
    let workspace = support::workspace_root();
    let path = std::env::var_os("VMM_DEBIAN_BZIMAGE")
        .map_or_else(|| workspace.join("target/debian/vmlinuz"), PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing; run scripts/debian-kernel.sh",
        path.display()
    );
    eprintln!(
        "note: {} is missing (scripts/debian-kernel.sh fetches it); skipping",
        path.display()
    );
    None
}

#[test]
fn debian_kernel_census_is_plausible() {
    let Some(path) = debian_bzimage() else {
        return;
    };
    let report = json(&["scan", path_str(&path)]);
    assert_eq!(report["format"], "bzimage");
    assert_eq!(report["bzimage"]["compression"], "xz");
    assert!(
        report["instructions"].as_u64().unwrap() > 500_000,
        "{}",
        report["instructions"]
    );
    let regions: Vec<&str> = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        regions.contains(&".text") && regions.contains(&".init.text"),
        "{regions:?}"
    );
    for class in ["pushf", "popf", "iret", "mov_to_sreg", "cli", "sti"] {
        assert!(
            report["census"][class].as_u64().unwrap_or(0) > 0,
            "no {class} in the census"
        );
    }
    let sites = report["sites"].as_array().unwrap();
    let patch = report["actions"]["patch"].as_u64().unwrap();
    assert_eq!(
        sites.iter().filter(|s| s["action"] == "patch").count() as u64,
        patch,
        "one site per patch instruction"
    );
    let in_text = sites.iter().all(|s| hex(&s["address"]) >= 0xc000_0000);
    assert!(in_text, "the kernel is linked above 3 GiB");
}

#[test]
fn without_section_headers_the_executable_segment_is_scanned() {
    let mut data = std::fs::read(fixture()).unwrap();
    // e_shoff (0x20), e_shnum (0x30) and e_shstrndx (0x32) of an ELF32 header.
    data[0x20..0x24].fill(0);
    data[0x30..0x34].fill(0);
    let path = scratch().join("no-sections.elf");
    std::fs::write(&path, &data).unwrap();
    let report = json(&["scan", path_str(&path)]);
    let regions = report["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 1, "{regions:?}");
    assert!(regions[0]["name"].as_str().unwrap().starts_with("segment "));
    // Recursive descent from the entry alone reaches every function through the calls
    // in `start`, so the census is the same as with symbols.
    assert_eq!(sensitive_census(&report), expected_census());
    assert!(report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s.get("symbol").is_none()));
    let err = failure(&["scan", path_str(&path), "--truth"], 1);
    assert_mentions(&err, &["no function symbols"]);
}

/// Corrupting header and table bytes must give an error or a report, never a crash.
#[test]
fn mutated_images_never_crash_the_scanner() {
    let data = std::fs::read(fixture()).unwrap();
    let bz = bzimage(&compress("gzip", &data), data.len());
    // A fixed xorshift sequence keeps the cases reproducible.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let parsed = Elf::parse(&data).unwrap();
    let shoff = usize::try_from(parsed.header.e_shoff).unwrap();
    for case in 0..2000 {
        let (mut bytes, hot) = if case % 4 == 3 {
            (bz.clone(), 0x1f0..0x260)
        } else if case % 2 == 0 {
            (data.clone(), 0..0x100)
        } else {
            (data.clone(), shoff..data.len())
        };
        for _ in 0..1 + next() % 4 {
            let at = hot.start + usize::try_from(next() % (hot.end - hot.start) as u64).unwrap();
            bytes[at] = next().to_le_bytes()[0];
        }
        if let Ok(image) = vmm_cli::image::parse(bytes, None) {
            let scan = vmm_cli::scan::scan_image(&image);
            let _ = vmm_cli::scan::truth::measure(&scan);
        }
    }
}
