//! Shadow paging as a user sees it: the paging guest kernels pass under `vmm run`, with
//! the checks QEMU cannot run (PDPTE checks at CR3 load) switched on; `--stats` counts
//! hidden and true faults, mediated page-table writes, scans and rescans; and guest reads
//! of patched code behave as this host allows.

use guests::{parse_report, Outcome};

/// Status and combined output of `vmm run --kernel NAME ARGS`.
fn run(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let run = support::run(
        support::vmm(60, &["run", "--kernel", support::guest_kernel(name)]).args(args),
    );
    (run.status, run.all_output())
}

#[test]
fn translated_paging_guest_invalidates_rewritten_code() {
    let (status, out) = run("paging", &["--stats"]);
    let report = parse_report(&out);
    assert_eq!(status, Some(1), "{out}");
    assert!(report.all_passed() && report.passed >= 20, "{out}");
    assert_eq!(support::stats_counter(&out, "true_page_faults"), 7, "{out}");
    assert!(
        support::stats_counter(&out, "hidden_page_faults") > 0,
        "{out}"
    );
    // Self-modifying code through aliases: each rewrite drops the blocks of its page.
    assert!(
        support::stats_counter(&out, "tc_invalidations") > 0,
        "{out}"
    );
    assert!(
        support::stats_counter(&out, "paged_code_writes") > 0,
        "{out}"
    );
    // Nothing is scanned or patched in translate mode.
    assert_eq!(support::stats_counter(&out, "pages_scanned"), 0, "{out}");
    assert_eq!(support::stats_counter(&out, "patched_sites"), 0, "{out}");
}

#[test]
fn paging_guest_passes_and_stats_count_shadow_paging_work() {
    let (status, out) = run("paging", &["--exec", "patch", "--stats"]);
    let report = parse_report(&out);
    assert_eq!(status, Some(1), "{out}");
    assert!(report.all_passed() && report.passed >= 20, "{out}");
    assert!(
        support::stats_counter(&out, "hidden_page_faults") > 0,
        "{out}"
    );
    // Not-present and write-protect faults the guest provokes on purpose: four in the
    // #PF checks, three after PTE updates.
    assert_eq!(support::stats_counter(&out, "true_page_faults"), 7, "{out}");
    assert!(
        support::stats_counter(&out, "page_table_writes_mediated") > 0,
        "{out}"
    );
    assert!(support::stats_counter(&out, "pages_scanned") > 0, "{out}");
    // The self-modifying code is rescanned after each rewrite.
    assert!(support::stats_counter(&out, "rescans") > 0, "{out}");
    assert!(
        support::stats_counter(&out, "paged_code_writes") > 0,
        "{out}"
    );
    for row in ["hidden_page_fault", "table_write", "guest_page_fault"] {
        assert!(out.contains(row), "no exit reason {row}: {out}");
    }
}

#[test]
fn translate_mode_retranslates_page_table_writers() {
    // The repeated writers: one store rewrites a live PTE forty times, then writes
    // ordinary memory. It is retranslated into a gate exit, then declined again.
    let (status, out) = run("paging", &["--exec", "translate", "--stats"]);
    let report = parse_report(&out);
    assert_eq!(status, Some(1), "{out}");
    assert!(report.all_passed() && report.passed >= 20, "{out}");
    assert!(
        support::stats_counter(&out, "tc_sites_mediated") >= 1,
        "{out}"
    );
    assert!(
        support::stats_counter(&out, "tc_sites_declined") >= 1,
        "{out}"
    );
}

#[test]
fn pae_guest_passes_with_pdpte_checks_at_cr3_load() {
    let (status, out) = run("paging_pae", &["--append", "pdpte-load-check"]);
    let report = parse_report(&out);
    assert_eq!(status, Some(1), "{out}");
    assert!(report.all_passed() && report.skipped == 0, "{out}");
}

#[test]
fn user_processes_in_separate_address_spaces() {
    let (status, out) = run("paging_user", &["--stats"]);
    let report = parse_report(&out);
    assert_eq!(status, Some(1), "{out}");
    assert!(report.all_passed() && report.passed >= 15, "{out}");
    // Per process: a supervisor read below and above the clamp, a read-only write.
    assert_eq!(support::stats_counter(&out, "true_page_faults"), 6, "{out}");
}

/// Whether the host gives execute-only pages (protection keys enabled by the kernel).
fn host_has_exec_only() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    flags.contains(&"pku") && flags.contains(&"ospke")
}

#[test]
fn reads_of_patched_code_follow_the_host() {
    let (status, out) = run(
        "paging",
        &["--exec", "patch", "--append", "code-reads", "--stats"],
    );
    let report = parse_report(&out);
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|(_, o)| *o == Outcome::Fail)
        .map(|(n, _)| n.as_str())
        .collect();
    if host_has_exec_only() {
        // Patched pages are execute-only; reads are served from the original bytes.
        assert_eq!(status, Some(1), "{out}");
        assert!(failed.is_empty(), "{out}");
        assert_eq!(
            support::stats_counter(&out, "execute_only_code"),
            1,
            "{out}"
        );
        assert!(
            support::stats_counter(&out, "paged_accesses_emulated") > 0,
            "{out}"
        );
    } else {
        // Without protection keys a page that executes is readable: reads of a patched
        // site see the trap byte. Exactly the code-reading checks fail, nothing else.
        assert_eq!(
            support::stats_counter(&out, "execute_only_code"),
            0,
            "{out}"
        );
        assert_eq!(failed.len(), 3, "{out}");
        assert!(
            failed
                .iter()
                .all(|n| n.starts_with("code: reading") || n.starts_with("own code:")),
            "{out}"
        );
    }
}
