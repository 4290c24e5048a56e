//! Parser for the result lines a guest prints on its serial port (lib/report.c):
//! `PASS: prefix: name`, `FAIL: …`, `SKIP: …`, then
//! `SUMMARY: N tests, N unexpected failures, N skipped` and `N passed, N failed`.

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The check held.
    Pass,
    /// The check did not hold.
    Fail,
    /// The check could not run in this configuration.
    Skip,
}

/// Everything a guest reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each check in output order: full name (with prefixes) and outcome.
    pub checks: Vec<(String, Outcome)>,
    /// Number of `PASS:` lines.
    pub passed: usize,
    /// Number of `FAIL:` lines.
    pub failed: usize,
    /// Number of `SKIP:` lines.
    pub skipped: usize,
    /// The guest's own closing line `N passed, N failed`, if it got that far.
    pub closing: Option<(usize, usize)>,
}

impl Report {
    /// True when the guest finished (printed its closing line), that line agrees with the
    /// check lines, and nothing failed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.closing == Some((self.passed, 0))
    }
}

fn closing_line(line: &str) -> Option<(usize, usize)> {
    let (passed, failed) = line.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// Parses a guest's serial output. Lines that are not result lines (banners, INFO lines,
/// firmware noise) are ignored; `\r\n` line ends are accepted.
pub fn parse_report(output: &str) -> Report {
    let mut r = Report::default();
    for line in output.lines().map(|l| l.trim_end_matches('\r')) {
        let (outcome, name) = if let Some(n) = line.strip_prefix("PASS: ") {
            r.passed += 1;
            (Outcome::Pass, n)
        } else if let Some(n) = line.strip_prefix("FAIL: ") {
            r.failed += 1;
            (Outcome::Fail, n)
        } else if let Some(n) = line.strip_prefix("SKIP: ") {
            r.skipped += 1;
            (Outcome::Skip, n)
        } else {
            if let Some(c) = closing_line(line) {
                r.closing = Some(c);
            }
            continue;
        };
        r.checks.push((name.to_string(), outcome));
    }
    r
}

/// The identity of a check across runs: its name without what a run adds to it — the
/// `: skipped by quirk-…` tail of a check a quirk word skipped, parenthesised values
/// (`(got 1f)`), numbers and quoted strings (`vendor "GenuineIntel", max leaf 4`), which
/// differ between machines. Checks whose keys collide are told apart by their order
/// ([`pair_checks`]).
pub fn check_key(name: &str) -> String {
    let mut key = match name.find(": skipped by quirk-") {
        Some(i) => &name[..i],
        None => name,
    }
    .to_string();
    while let Some(open) = key.rfind(" (") {
        let tail = &key[open..];
        if !tail.ends_with(')') {
            break;
        }
        key.truncate(open);
    }
    // The bracketed forms (`[o16 ptr16:16]`) name the check; they are kept.
    let mut in_forms = false;
    key.split(' ')
        .map(|w| {
            in_forms |= w.starts_with('[');
            let keep = in_forms;
            in_forms &= !w.ends_with(']');
            if keep {
                w
            } else if w.starts_with('"') {
                "\"\""
            } else if w.bytes().any(|b| b.is_ascii_digit()) {
                "#"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// True for a check a quirk word skipped (`SKIP: …: skipped by quirk-…`).
pub fn skipped_by_quirk(name: &str, outcome: Outcome) -> bool {
    outcome == Outcome::Skip && name.contains(": skipped by quirk-")
}

/// One check as two runs of the same kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The check's name as the first run (else the second) reported it.
    pub name: String,
    /// Outcome in the first run, None if it did not report the check.
    pub first: Option<Outcome>,
    /// Outcome in the second run, None if it did not report the check.
    pub second: Option<Outcome>,
}

impl Pair {
    /// Both runs reported the check with the same outcome.
    pub fn agree(&self) -> bool {
        self.first.is_some() && self.first == self.second
    }
}

/// Pairs the checks of two runs of one kernel by [`check_key`]; the n-th check with a key
/// in one run pairs with the n-th with that key in the other. First-run order, then the
/// checks only the second run reported.
pub fn pair_checks(first: &Report, second: &Report) -> Vec<Pair> {
    let mut taken = vec![false; second.checks.len()];
    let mut pairs = Vec::with_capacity(first.checks.len());
    for (name, outcome) in &first.checks {
        let key = check_key(name);
        let partner = second
            .checks
            .iter()
            .enumerate()
            .find(|(i, (n, _))| !taken[*i] && check_key(n) == key)
            .map(|(i, (_, o))| (i, *o));
        if let Some((i, _)) = partner {
            taken[i] = true;
        }
        pairs.push(Pair {
            name: name.clone(),
            first: Some(*outcome),
            second: partner.map(|(_, o)| o),
        });
    }
    for (i, (name, outcome)) in second.checks.iter().enumerate() {
        if !taken[i] {
            pairs.push(Pair {
                name: name.clone(),
                first: None,
                second: Some(*outcome),
            });
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_prefixes_and_closing_line() {
        let out = "demo banner\r\nPASS: eflags: pushf IF=0 after cli\r\n\
                   FAIL: cr0: TS set\r\nSKIP: #PF (paging is off)\r\nINFO: x\r\n\
                   SUMMARY: 3 tests, 1 unexpected failures, 1 skipped\r\n1 passed, 1 failed\r\n";
        let r = parse_report(out);
        assert_eq!(
            r.checks,
            vec![
                ("eflags: pushf IF=0 after cli".to_string(), Outcome::Pass),
                ("cr0: TS set".to_string(), Outcome::Fail),
                ("#PF (paging is off)".to_string(), Outcome::Skip),
            ]
        );
        assert_eq!((r.passed, r.failed, r.skipped), (1, 1, 1));
        assert_eq!(r.closing, Some((1, 1)));
        assert!(!r.all_passed());
    }

    #[test]
    fn all_passed_needs_the_closing_line_to_agree() {
        assert!(parse_report("PASS: a\nPASS: b\n2 passed, 0 failed\n").all_passed());
        // A guest that died before its summary did not pass, whatever it printed before.
        assert!(!parse_report("PASS: a\n").all_passed());
        // A closing line that disagrees with the check lines means lost or forged output.
        assert!(!parse_report("PASS: a\n2 passed, 0 failed\n").all_passed());
        assert!(!parse_report("").all_passed());
    }

    #[test]
    fn check_keys_drop_values_and_quirk_tails() {
        assert_eq!(
            check_key("lar: [o32 reg] rights (got c09b00)"),
            "lar: [o32 reg] rights"
        );
        assert_eq!(check_key("a (x) b (1) (2)"), "a (x) b");
        assert_eq!(
            check_key("#AC: [cpl3] load: skipped by quirk-no-alignment-check"),
            "#AC: [cpl3] load"
        );
        assert_eq!(check_key("no values"), "no values");
        assert_eq!(
            check_key("cpuid: leaf 0: vendor \"GenuineIntel\", max leaf 4"),
            check_key("cpuid: leaf 0: vendor \"AuthenticAMD\", max leaf 13")
        );
        assert_ne!(check_key("MOV to DS"), check_key("MOV to ES"));
        assert!(skipped_by_quirk("x: skipped by quirk-y", Outcome::Skip));
        assert!(!skipped_by_quirk("x: skipped by quirk-y", Outcome::Pass));
    }

    #[test]
    fn pairs_checks_by_key_and_occurrence() {
        let vmm = parse_report("PASS: a (1)\nPASS: d\nFAIL: d\nPASS: only vmm\n");
        let qemu = parse_report("PASS: a (2)\nPASS: d\nPASS: d\nSKIP: q: skipped by quirk-z\n");
        let p = pair_checks(&vmm, &qemu);
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.first, p.second))
            .collect();
        use Outcome::*;
        assert_eq!(
            got,
            vec![
                ("a (1)", Some(Pass), Some(Pass)),
                ("d", Some(Pass), Some(Pass)),
                ("d", Some(Fail), Some(Pass)),
                ("only vmm", Some(Pass), None),
                ("q: skipped by quirk-z", None, Some(Skip)),
            ]
        );
        assert!(p[0].agree() && p[1].agree());
        assert!(!p[2].agree() && !p[3].agree() && !p[4].agree());
    }

    #[test]
    fn result_words_only_count_at_line_start() {
        let r = parse_report("note: PASS: not a check\nxPASS: no\n3 passed, 0 failed extra\n");
        assert!(r.checks.is_empty());
        assert_eq!(r.closing, None);
    }
}
