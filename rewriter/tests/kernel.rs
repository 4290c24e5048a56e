//! Scanning Debian's i386 kernel text: the census must show the instructions that
//! Linux's i386 entry, segment and CPU-setup code is made of, and the scan must be
//! self-consistent on millions of real instructions.

// reason: a test builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

#[path = "common/kernel.rs"]
mod kernel;

use rewriter::{scan_region, Action, Census, Class};

#[test]
fn kernel_census() {
    let Some(texts) = kernel::text_sections() else {
        return;
    };
    let mut census = Census::default();
    for text in &texts {
        let scan = scan_region(&text.bytes, text.address, &[text.address]);
        let sweep_only = scan_region(&text.bytes, text.address, &[]);
        let differing = symmetric_difference(&scan.starts, &sweep_only.starts);
        eprintln!(
            "section at {:#x}: {} starts with descent from its start, {} by sweep alone, \
             {differing} in only one of them, {} overlaps",
            text.address,
            scan.starts.len(),
            sweep_only.starts.len(),
            scan.overlaps.len()
        );
        // Compiled kernel text is dense code: a sweep that desynchronised often would
        // show here as starts the descent does not confirm.
        assert!(
            differing * 1000 <= scan.starts.len(),
            "descent and sweep disagree on more than 0.1% of the starts"
        );
        for site in &scan.sites {
            assert_eq!(site.instruction.ip32(), site.address);
            assert_eq!(site.instruction.len(), usize::from(site.length));
        }
        census.add(&Census::from_region(&scan));
    }
    eprintln!(
        "{} bytes, {} instructions, {} invalid bytes",
        census.bytes, census.instructions, census.invalid_bytes
    );
    for (class, n) in &census.classes {
        eprintln!("  {:<14} {:<5} {n}", class.name(), class.action().name());
    }
    assert_eq!(
        census.classes.values().sum::<u64>(),
        census.instructions,
        "every instruction has one class"
    );
    assert_eq!(census.actions.values().sum::<u64>(), census.instructions);
    // What Linux/i386 cannot do without: interrupt flag handling, segment reloads in
    // its entry code, the return to user mode, descriptor table and control register
    // setup, MSRs, port I/O and the idle HLT.
    for class in [
        Class::Pushf,
        Class::Popf,
        Class::PushSreg,
        Class::PopSreg,
        Class::MovToSreg,
        Class::MovFromSreg,
        Class::Iret,
        Class::Cli,
        Class::Sti,
        Class::Hlt,
        Class::In,
        Class::Out,
        Class::Lgdt,
        Class::Lidt,
        Class::Ltr,
        Class::Lldt,
        Class::MovCr,
        Class::MovDr,
        Class::Rdmsr,
        Class::Wrmsr,
        Class::Cpuid,
        Class::Invlpg,
        Class::Ud,
    ] {
        assert!(
            census.class_count(class) > 0,
            "no {} in the kernel",
            class.name()
        );
    }
    assert!(census.action_count(Action::Patch) > 100);
    assert!(census.instructions > 2_000_000);
}

/// How many elements are in exactly one of two sorted lists.
fn symmetric_difference(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => (n, i) = (n + 1, i + 1),
            std::cmp::Ordering::Greater => (n, j) = (n + 1, j + 1),
            std::cmp::Ordering::Equal => (i, j) = (i + 1, j + 1),
        }
    }
    n + (a.len() - i) + (b.len() - j)
}
