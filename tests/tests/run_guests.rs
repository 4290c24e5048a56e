//! `vmm run` as a user runs it: the demo guest with statistics, bad input and a
//! triple-faulting guest behave as documented. Every test kernel of the repository runs
//! under the monitor (and QEMU) in `tests/suite.rs`.

use std::process::Command;

use guests::parse_report;
use support::Run;

/// `vmm run` under coreutils `timeout`, so a hung guest cannot hang the suite.
fn vmm_with_timeout(timeout_s: u32) -> Command {
    support::vmm(timeout_s, &["run"])
}

fn vmm() -> Command {
    vmm_with_timeout(60)
}

/// A finished run that did not need stopping at its time limit.
fn run(mut cmd: Command) -> Run {
    let run = support::run(&mut cmd);
    assert!(!run.timed_out(), "vmm timed out");
    run
}

#[test]
fn demo_guest_runs_without_arguments_and_prints_stats() {
    let json = support::scratch_dir("run_guests").join("stats.json");
    let mut cmd = vmm();
    cmd.args(["--stats", "--stats-json"]).arg(&json);
    let out = run(cmd);
    let output = out.all_output();
    assert_eq!(out.status, Some(1), "{output}");
    let report = parse_report(&output);
    assert!(report.all_passed() && report.passed > 0, "{output}");
    // Serial output and the statistics both reach the combined output.
    for row in [
        "exits by reason",
        "rewrite_trap",
        "port_io",
        "total",
        "top trap sites",
    ] {
        assert!(output.contains(row), "no {row:?} in:\n{output}");
    }
    let text = std::fs::read_to_string(&json).expect("stats JSON written");
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(
        v["exits"]["rewrite_trap"].as_u64().unwrap_or(0) > 0,
        "{text}"
    );
    assert!(v["total_exits"].as_u64().unwrap_or(0) > 0, "{text}");
    // The default mode translates: blocks, chains and lookups, nothing scanned.
    for counter in ["tc_blocks_translated", "tc_bytes", "tc_chains"] {
        assert!(
            v["counters"][counter].as_u64().unwrap_or(0) > 0,
            "{counter}: {text}"
        );
    }
    assert_eq!(v["counters"]["pages_scanned"].as_u64(), Some(0), "{text}");
}

/// `--profile` draws where the exits went: the reasons and the hottest sites with their
/// instruction class, the same the statistics list.
#[test]
fn profile_picture_shows_reasons_and_sites() {
    let svg = support::scratch_dir("run_guests").join("profile.svg");
    let _ = std::fs::remove_file(&svg);
    let mut cmd = vmm();
    cmd.args(["--stats", "--profile"]).arg(&svg);
    let out = run(cmd);
    let output = out.all_output();
    assert_eq!(out.status, Some(1), "{output}");
    let picture = std::fs::read_to_string(&svg).expect("--profile wrote the picture");
    assert!(picture.starts_with("<svg"), "not an SVG document");
    for text in [
        "exits by reason",
        "rewrite_trap",
        "port_io",
        "hottest trap sites",
    ] {
        assert!(picture.contains(text), "no {text:?} in the picture");
    }
    // The hottest site of the statistics, with its class, is in the picture.
    let top = output
        .lines()
        .skip_while(|l| !l.contains("top trap sites"))
        .nth(1)
        .unwrap_or_else(|| panic!("no top trap site in:\n{output}"));
    let words: Vec<&str> = top.split_whitespace().collect();
    let (site, class) = (words[0], words[1]);
    assert!(
        picture.contains(&format!("{site} {class}")),
        "no {site} {class} in the picture; statistics:\n{output}"
    );
}

/// `--stats` counts accesses per device and lists the ports and MMIO addresses no device
/// claimed, by address (the io kernel probes ports a PC leaves unclaimed).
#[test]
fn stats_count_device_accesses_and_list_unclaimed_addresses() {
    let json = support::scratch_dir("run_guests").join("io-stats.json");
    let kernel = support::guest_kernel("io");
    let mut cmd = vmm();
    cmd.args(["--kernel", kernel, "--stats", "--stats-json"])
        .arg(&json);
    let out = run(cmd);
    let output = out.all_output();
    assert_eq!(out.status, Some(1), "{output}");
    for row in [
        "port_com1_accesses",
        "port_pic_master_accesses",
        "unclaimed accesses",
    ] {
        assert!(output.contains(row), "no {row:?} in:\n{output}");
    }
    let text = std::fs::read_to_string(&json).expect("stats JSON written");
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(
        v["counters"]["port_com1_accesses"].as_u64().unwrap_or(0) > 0,
        "{text}"
    );
    let unclaimed = v["unclaimed_accesses"].as_array().expect("an array");
    assert!(
        unclaimed.iter().any(
            |u| u["at"].as_str().is_some_and(|a| a.starts_with("port 0x"))
                && u["reads"].as_u64().unwrap_or(0) + u["writes"].as_u64().unwrap_or(0) > 0
        ),
        "{text}"
    );
}

/// CPUID answers with the VM's CPU model on both paths: trapped natively where the host
/// has CPUID faulting, rewritten where it has not (`VMM_CPUID_FAULTING=off` takes that path
/// on any host). The sensitive kernel checks the vendor, family and feature bits.
#[test]
fn cpuid_is_the_vms_with_and_without_host_cpuid_faulting() {
    let kernel = support::guest_kernel("sensitive");
    for (env, faulting) in [(None, None), (Some("off"), Some(0))] {
        let mut cmd = vmm();
        cmd.args(["--kernel", kernel, "--stats"]);
        if let Some(v) = env {
            cmd.env("VMM_CPUID_FAULTING", v);
        }
        let out = run(cmd);
        let output = out.all_output();
        assert_eq!(out.status, Some(1), "{env:?}: {output}");
        let report = parse_report(&output);
        assert!(
            report.all_passed() && report.checks.iter().any(|c| c.0.contains("cpuid")),
            "{env:?}: {output}"
        );
        if let Some(expected) = faulting {
            assert_eq!(support::stats_counter(&output, "cpuid_faulting"), expected);
        }
    }
}

/// The status and combined output of `vmm run ARGS`.
fn run_args(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = vmm();
    cmd.args(args);
    let out = run(cmd);
    (out.status, out.all_output())
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let dir = support::scratch_dir("run_guests-bad-input");
    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, vec![0x5au8; 20_000]).unwrap();
    let missing = dir.join("no-such-kernel.elf");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--kernel".into(), path(&missing)],
            "no-such-kernel.elf",
        ),
        (vec!["--kernel".into(), path(&garbage)], "garbage.bin"),
        (vec!["--mem".into(), "1M".into()], "too small"),
        (vec!["--mem".into(), "4G".into()], "at most 3G"),
        (vec!["--mem".into(), "3073M".into()], "MMIO hole below 4G"),
        (vec!["--mem".into(), "lots".into()], "size"),
        (vec!["--mem".into(), "3000000".into()], "multiple of 4 KiB"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, output) = run_args(&args);
        assert_eq!(status, Some(2), "{args:?}: {output}");
        assert!(output.contains("error"), "{args:?}: {output}");
        assert!(
            output.contains(needle),
            "{args:?} should mention {needle:?}: {output}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The largest guest a PC has (3 GiB, up to the MMIO hole) boots: the linear space holds
/// it, and the firmware guest finds the memory map, fw_cfg and CMOS all saying 3 GiB.
#[test]
fn a_guest_with_3_gib_boots() {
    let kernel = support::guest_kernel("firmware");
    let (status, output) = run_args(&["--kernel", kernel, "--mem", "3G", "--append", "probe-word"]);
    let report = parse_report(&output);
    assert_eq!(status, Some(1), "{output}");
    assert!(report.all_passed() && report.passed > 50, "{output}");
    for check in [
        "fw_cfg: RAM size is whole pages, 2 MiB to 3 GiB (3072 MiB)",
        "fw_cfg: etc/e820: RAM ends at the RAM size",
        "cmos: memory above 16 MiB (0x34) agrees with the RAM size",
    ] {
        assert!(
            output.contains(&format!("PASS: {check}")),
            "{check}: {output}"
        );
    }
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// A Multiboot kernel (a.out kludge) loaded at 1 MiB whose code, from offset 0x20, is
/// `code`.
fn aout_kernel(code: &[u8]) -> Vec<u8> {
    const BASE: u32 = 0x10_0000;
    const MAGIC: u32 = 0x1bad_b002;
    const AOUT_KLUDGE: u32 = 1 << 16;
    let mut image = Vec::new();
    for word in [
        MAGIC,
        AOUT_KLUDGE,
        0u32.wrapping_sub(MAGIC.wrapping_add(AOUT_KLUDGE)),
        BASE,        // header_addr
        BASE,        // load_addr
        0,           // load_end_addr: the whole file
        0,           // bss_end_addr: none
        BASE + 0x20, // entry_addr
    ] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    image.extend_from_slice(code);
    image
}

/// A kernel that loads an empty IDT and executes INT3: the breakpoint cannot be
/// delivered (#GP), nor can the #GP (#DF), nor the #DF — a triple fault.
fn triple_fault_kernel() -> Vec<u8> {
    // lidt [0x100040]; int3; jmp $
    let mut code = vec![0x0f, 0x01, 0x1d];
    code.extend_from_slice(&0x10_0040u32.to_le_bytes());
    code.extend_from_slice(&[0xcc, 0xeb, 0xfe]);
    code.resize(0x20, 0x90);
    // IDTR image at 0x100040: limit 0, base 0.
    code.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    aout_kernel(&code)
}

/// The statuses `vmm run` documents: a debug-exit status (odd), 0 for an orderly halt, 4
/// for a guest failure. Anything else (a panic's 101, death by a signal) is a monitor bug.
fn documented_status(status: Option<i32>) -> bool {
    matches!(status, Some(s) if s == 0 || s == 4 || s % 2 == 1)
}

/// Hostile guests: kernels whose code is random bytes (seeded, so a failure reproduces).
/// Odd cases first load random values into ESP, DS, SS and the IDTR; even cases run the
/// random bytes from the flat boot state. Whatever they do, the monitor ends with a
/// documented status (or is stopped by the time limit while the guest loops) and never
/// panics or dies by a signal.
#[test]
fn random_code_never_breaks_the_monitor() {
    let dir = support::scratch_dir("run_guests-random");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: small, seeded, good enough to spread bytes.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut outcomes = std::collections::BTreeMap::new();
    for case in 0..24 {
        let mut code = Vec::new();
        if case % 2 == 1 {
            // mov esp, imm32; mov ax, imm16; mov ds, ax; mov ss, ax; lidt [imm32]
            code.push(0xbc);
            code.extend_from_slice(&next().to_le_bytes()[..4]);
            code.push(0x66);
            code.push(0xb8);
            code.extend_from_slice(&next().to_le_bytes()[..2]);
            code.extend_from_slice(&[0x8e, 0xd8, 0x8e, 0xd0]);
            code.extend_from_slice(&[0x0f, 0x01, 0x1d]);
            code.extend_from_slice(&(0x10_0000 + next() % 0x2000).to_le_bytes()[..4]);
        }
        for _ in 0..4096 {
            code.push(next().to_le_bytes()[0]);
        }
        let file = dir.join(format!("random-{case}.bin"));
        std::fs::write(&file, aout_kernel(&code)).unwrap();
        let mut cmd = vmm_with_timeout(10);
        cmd.args(["--kernel", &path(&file), "--mem", "8M"]);
        let out = support::run(&mut cmd);
        let (status, stderr) = (out.status, &out.stderr);
        assert!(
            documented_status(status) || out.timed_out(),
            "case {case}: status {status:?} (signal {:?})\n{stderr}",
            out.signal
        );
        assert!(!stderr.contains("panicked"), "case {case}: {stderr}");
        let reason = stderr
            .lines()
            .find_map(|l| l.strip_prefix("vmm: guest stopped: "))
            .map(|r| r.split(':').next().unwrap_or(r).to_owned());
        *outcomes.entry((status, reason)).or_insert(0u32) += 1;
    }
    for ((status, reason), n) in &outcomes {
        println!(
            "{n:>3} x exit {status:?}: {}",
            reason.as_deref().unwrap_or("-")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn triple_fault_stops_with_a_register_dump() {
    let file = support::scratch_dir("run_guests").join("triple-fault.bin");
    std::fs::write(&file, triple_fault_kernel()).unwrap();
    let (status, output) = run_args(&["--kernel", &path(&file)]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(status, Some(4), "{output}");
    assert!(output.contains("triple fault"), "{output}");
    assert!(
        output.contains("EIP=00100027"),
        "the dump shows the faulting INT3: {output}"
    );
    assert!(output.contains("IDT=     00000000 00000000"), "{output}");
}
