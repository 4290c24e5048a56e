//! Instruction coverage of the guest test suite: which rewriter classes
//! ([`rewriter::CLASS_TABLE`]) and which of their encoding forms are exercised by at least
//! one passing check, and which exception vectors are.
//!
//! Coverage is computed from check names, never written by hand. A suite check is named
//! `<class>: [<forms>] what` (guests/lib/guest.h): the first prefix is the class
//! name (`pushf`, `far_jmp`, …) or an exception mnemonic (`#GP`), the bracketed words say
//! which encoding the check executed (`o16`, `a16`, `mem`, `ptr16:16`, …). [`FORMS`] lists
//! the forms the architecture allows for each class, so a form no check executes shows up
//! as missing.

use std::fmt::Write as _;

use guests::Outcome;
use rewriter::{Action, CLASS_TABLE};

/// The encoding forms each class has on IA-32 (protected mode, CPL 0 unless `cpl3`), by
/// class name. Words: `o8`/`o16`/`o32` operand size, `a16` 16-bit addressing (0x67),
/// `seg` a segment override, `reg`/`mem` operand kind, segment register names, far
/// pointer forms, `imm8`/`dx` port operands, `rep`, `df` (direction flag set), `cpl0`/`cpl3`
/// the privilege level the check runs at, `gate` through a call gate, `outer` to an outer
/// privilege level. Classes not listed have no forms beyond executing at all.
pub const FORMS: &[(&str, &[&str])] = &[
    ("pushf", &["o16", "o32"]),
    ("popf", &["o16", "o32"]),
    ("sgdt", &["o16", "o32", "mem", "a16", "seg"]),
    ("sidt", &["o16", "o32", "mem", "a16", "seg"]),
    ("smsw", &["o16", "o32", "reg", "mem", "a16", "seg"]),
    ("sldt", &["o16", "o32", "reg", "mem", "a16", "seg"]),
    ("str", &["o16", "o32", "reg", "mem", "a16", "seg"]),
    ("lar", &["o16", "o32", "reg", "mem", "a16", "seg"]),
    ("lsl", &["o16", "o32", "reg", "mem", "a16", "seg"]),
    ("verr", &["reg", "mem", "a16", "seg"]),
    ("verw", &["reg", "mem", "a16", "seg"]),
    ("mov_from_sreg", &["o16", "o32", "reg", "mem", "a16", "seg"]),
    (
        "push_sreg",
        &["o16", "o32", "cs", "ss", "ds", "es", "fs", "gs"],
    ),
    ("pop_sreg", &["o16", "o32", "ss", "ds", "es", "fs", "gs"]),
    ("mov_to_sreg", &["o16", "o32", "reg", "mem", "a16", "seg"]),
    ("lds", &["o16", "o32", "m16:16", "m16:32", "a16", "seg"]),
    ("les", &["o16", "o32", "m16:16", "m16:32", "a16", "seg"]),
    ("lfs", &["o16", "o32", "m16:16", "m16:32", "a16", "seg"]),
    ("lgs", &["o16", "o32", "m16:16", "m16:32", "a16", "seg"]),
    ("lss", &["o16", "o32", "m16:16", "m16:32", "a16", "seg"]),
    (
        "far_call",
        &[
            "o16", "o32", "ptr16:16", "ptr16:32", "m16:16", "m16:32", "gate",
        ],
    ),
    (
        "far_jmp",
        &[
            "o16", "o32", "ptr16:16", "ptr16:32", "m16:16", "m16:32", "a16", "seg",
        ],
    ),
    ("far_ret", &["o16", "o32", "imm16", "outer"]),
    ("iret", &["o16", "o32"]),
    ("sysenter", &["cpl3"]),
    (
        "fpu",
        &[
            "x87", "wait", "mmx", "sse", "fxsr", "mem", "seg", "a16", "ts", "em", "mp", "clear",
        ],
    ),
    ("cli", &["cpl0"]),
    ("sti", &["cpl0"]),
    ("hlt", &["cpl0"]),
    ("in", &["o8", "o16", "o32", "imm8", "dx", "cpl3"]),
    ("out", &["o8", "o16", "o32", "imm8", "dx", "cpl3"]),
    ("ins", &["o8", "o16", "o32", "rep", "df", "cpl3"]),
    ("outs", &["o8", "o16", "o32", "rep", "df", "cpl3"]),
    ("lgdt", &["o16", "o32", "mem", "a16", "seg"]),
    ("lidt", &["o16", "o32", "mem", "a16", "seg"]),
    ("lldt", &["reg", "mem", "a16", "seg"]),
    ("ltr", &["reg", "mem"]),
    ("mov_cr", &["cr0", "cr2", "cr3", "cr4"]),
    ("mov_dr", &["dr0", "dr1", "dr2", "dr3", "dr6", "dr7"]),
    ("clts", &["cpl0"]),
    ("invd", &["cpl0"]),
    ("wbinvd", &["cpl0"]),
    ("invlpg", &["mem", "a16", "seg"]),
    ("rdmsr", &["ecx"]),
    ("wrmsr", &["ecx"]),
    ("lmsw", &["reg", "mem", "a16", "seg"]),
    ("sysexit", &["cpl0"]),
    ("rdpmc", &["cpl0"]),
    ("cpuid", &["leaf0", "leaf1"]),
    ("int", &["imm8", "trap-gate", "intr-gate", "cpl3", "tss"]),
    ("int3", &["cpl0"]),
    ("int1", &["cpl0"]),
    ("into", &["cpl0"]),
    ("ud", &["ud2", "ud1"]),
    ("privileged", &["cpl0"]),
];

/// The exception vectors a monitor reflects into the guest, by their check prefix.
pub const VECTORS: &[(&str, u8)] = &[
    ("#DE", 0),
    ("#DB", 1),
    ("#BP", 3),
    ("#OF", 4),
    ("#BR", 5),
    ("#UD", 6),
    ("#NM", 7),
    ("#DF", 8),
    ("#TS", 10),
    ("#NP", 11),
    ("#SS", 12),
    ("#GP", 13),
    ("#PF", 14),
    ("#MF", 16),
    ("#AC", 17),
];

/// The subject (first prefix) and the forms of a check name, or None when the name has no
/// `subject: ` prefix.
pub fn parse_check(name: &str) -> Option<(&str, Vec<&str>)> {
    let (subject, rest) = name.split_once(": ")?;
    let forms = rest
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .map(|(words, _)| words.split_whitespace().collect())
        .unwrap_or_default();
    Some((subject, forms))
}

/// How well a class or vector is covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Every form has a passing check (or, without forms, some check passes), none fails.
    Full,
    /// Some check passes, but a form has no passing check or some check fails.
    Partial,
    /// Checks exist, none passes.
    Failing,
    /// Only skipped checks.
    Skipped,
    /// No check at all.
    None,
}

impl Status {
    /// Lower-case word for the table.
    pub fn name(self) -> &'static str {
        match self {
            Status::Full => "full",
            Status::Partial => "partial",
            Status::Failing => "failing",
            Status::Skipped => "skipped",
            Status::None => "none",
        }
    }
}

/// Coverage of one class or vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Class name or vector mnemonic.
    pub subject: String,
    /// The rewriter's action (`patch`/`trap`/`none`), or `vector`.
    pub kind: &'static str,
    /// Forms with at least one passing check, in [`FORMS`] order (then unlisted ones).
    pub covered: Vec<String>,
    /// Forms the architecture allows that no passing check executes.
    pub missing: Vec<String>,
    /// Passing, failing and skipped checks.
    pub passed: usize,
    /// Failing checks.
    pub failed: usize,
    /// Skipped checks.
    pub skipped: usize,
    /// The verdict.
    pub status: Status,
}

fn row<'a>(
    subject: &str,
    kind: &'static str,
    expected: &[&str],
    checks: impl Iterator<Item = (&'a str, Outcome)>,
) -> Row {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut seen: Vec<String> = Vec::new();
    for (name, outcome) in checks {
        let Some((s, forms)) = parse_check(name) else {
            continue;
        };
        if s != subject {
            continue;
        }
        match outcome {
            Outcome::Pass => {
                passed += 1;
                for f in forms {
                    if !seen.iter().any(|x| x == f) {
                        seen.push(f.to_string());
                    }
                }
            }
            Outcome::Fail => failed += 1,
            Outcome::Skip => skipped += 1,
        }
    }
    let mut covered: Vec<String> = expected
        .iter()
        .filter(|f| seen.iter().any(|s| s == *f))
        .map(|f| f.to_string())
        .collect();
    covered.extend(
        seen.iter()
            .filter(|s| !expected.contains(&s.as_str()))
            .cloned(),
    );
    let missing: Vec<String> = expected
        .iter()
        .filter(|f| !seen.iter().any(|s| s == *f))
        .map(|f| f.to_string())
        .collect();
    let status = if passed == 0 {
        if failed > 0 {
            Status::Failing
        } else if skipped > 0 {
            Status::Skipped
        } else {
            Status::None
        }
    } else if missing.is_empty() && failed == 0 {
        Status::Full
    } else {
        Status::Partial
    };
    Row {
        subject: subject.to_string(),
        kind,
        covered,
        missing,
        passed,
        failed,
        skipped,
        status,
    }
}

/// Coverage of every class of the rewriter's table (without `innocuous`, which needs no
/// monitor) and of every vector in [`VECTORS`], from check results (name, outcome).
pub fn compute(checks: &[(String, Outcome)]) -> (Vec<Row>, Vec<Row>) {
    let iter = || checks.iter().map(|(n, o)| (n.as_str(), *o));
    let classes = CLASS_TABLE
        .iter()
        .filter(|c| c.action != Action::None)
        .map(|c| {
            let expected = FORMS
                .iter()
                .find(|(n, _)| *n == c.name)
                .map_or(&[][..], |(_, f)| *f);
            row(c.name, c.action.name(), expected, iter())
        })
        .collect();
    let vectors = VECTORS
        .iter()
        .map(|(m, _)| row(m, "vector", &[], iter()))
        .collect();
    (classes, vectors)
}

fn words(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(" ")
    }
}

/// The coverage tables as text: one row per class, then one per vector, then a summary.
pub fn render(classes: &[Row], vectors: &[Row]) -> String {
    let mut out = String::new();
    let header = |out: &mut String, first: &str| {
        let _ = writeln!(
            out,
            "{first:<14} {:<7} {:<8} {:>4} {:>4} {:>4}  {:<52} missing forms",
            "action", "status", "pass", "fail", "skip", "forms covered"
        );
    };
    header(&mut out, "class");
    for r in classes.iter().chain(vectors) {
        if r.kind == "vector" && r.subject == vectors[0].subject {
            let _ = writeln!(out);
            header(&mut out, "vector");
        }
        let _ = writeln!(
            out,
            "{:<14} {:<7} {:<8} {:>4} {:>4} {:>4}  {:<52} {}",
            r.subject,
            r.kind,
            r.status.name(),
            r.passed,
            r.failed,
            r.skipped,
            words(&r.covered),
            words(&r.missing)
        );
    }
    let count = |rows: &[Row], s: Status| rows.iter().filter(|r| r.status == s).count();
    let _ = writeln!(
        out,
        "\nclasses: {} full, {} partial, {} failing, {} skipped, {} without checks (of {})",
        count(classes, Status::Full),
        count(classes, Status::Partial),
        count(classes, Status::Failing),
        count(classes, Status::Skipped),
        count(classes, Status::None),
        classes.len()
    );
    let _ = writeln!(
        out,
        "vectors: {} full, {} partial, {} failing, {} skipped, {} without checks (of {})",
        count(vectors, Status::Full),
        count(vectors, Status::Partial),
        count(vectors, Status::Failing),
        count(vectors, Status::Skipped),
        count(vectors, Status::None),
        vectors.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(text: &str) -> Vec<(String, Outcome)> {
        guests::parse_report(text).checks
    }

    #[test]
    fn check_names_give_subject_and_forms() {
        assert_eq!(
            parse_check("far_jmp: [o16 ptr16:16] to 0x40"),
            Some(("far_jmp", vec!["o16", "ptr16:16"]))
        );
        assert_eq!(
            parse_check("cpuid: leaf 0: vendor"),
            Some(("cpuid", vec![]))
        );
        assert_eq!(parse_check("#GP: [int] x"), Some(("#GP", vec!["int"])));
        assert_eq!(parse_check("no prefix"), None);
    }

    #[test]
    fn forms_and_status_come_from_passing_checks_only() {
        let c = checks(
            "PASS: pushf: [o16] a\nPASS: pushf: [o32] b\n\
             PASS: popf: [o16] c\nFAIL: popf: [o32] d\n\
             FAIL: sgdt: [o32 mem] e\nSKIP: #PF: [paging] f\n\
             PASS: #GP: [int] g\nPASS: lar: [o32 reg extra] h\n",
        );
        let (classes, vectors) = compute(&c);
        let get = |rows: &[Row], s: &str| rows.iter().find(|r| r.subject == s).unwrap().clone();
        let pushf = get(&classes, "pushf");
        assert_eq!((pushf.status, pushf.passed), (Status::Full, 2));
        assert_eq!(pushf.covered, vec!["o16", "o32"]);
        assert!(pushf.missing.is_empty());
        let popf = get(&classes, "popf");
        assert_eq!(popf.status, Status::Partial);
        assert_eq!(
            (popf.covered.clone(), popf.missing.clone()),
            (vec!["o16".to_string()], vec!["o32".to_string()])
        );
        assert_eq!(get(&classes, "sgdt").status, Status::Failing);
        assert_eq!(get(&classes, "sidt").status, Status::None);
        let lar = get(&classes, "lar");
        assert_eq!(
            lar.covered,
            vec!["o32", "reg", "extra"],
            "unlisted forms are shown too"
        );
        assert_eq!(lar.status, Status::Partial);
        assert_eq!(get(&vectors, "#PF").status, Status::Skipped);
        assert_eq!(get(&vectors, "#GP").status, Status::Full);
        assert_eq!(get(&vectors, "#DE").status, Status::None);
        // Every patched and trapping class has a row; `innocuous` has none.
        assert_eq!(classes.len(), CLASS_TABLE.len() - 1);
        assert!(classes.iter().all(|r| r.subject != "innocuous"));
        let text = render(&classes, &vectors);
        assert!(text.contains("pushf          patch   full"), "{text}");
        assert!(
            text.contains("classes: 1 full, 2 partial, 1 failing"),
            "{text}"
        );
    }

    #[test]
    fn every_forms_row_names_a_class_of_the_table() {
        for (name, forms) in FORMS {
            assert!(rewriter::Class::from_name(name).is_some(), "{name}");
            assert!(!forms.is_empty(), "{name}");
        }
    }
}
