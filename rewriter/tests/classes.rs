//! Table test: every line of `vectors/classes.txt` decodes to one instruction of the
//! stated class, and every class has at least one vector.

// reason: a test builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use iced_x86::{Decoder, DecoderOptions};
use rewriter::{classify, Class};

struct Vector {
    line: usize,
    bytes: Vec<u8>,
    class: Class,
    comment: String,
}

fn parse(text: &str) -> Vec<Vector> {
    let mut vectors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, ';').map(str::trim);
        let (Some(hex), Some(class), comment) = (fields.next(), fields.next(), fields.next())
        else {
            panic!("line {}: expected `hex ; class ; comment`: {raw}", i + 1);
        };
        let bytes = hex
            .split_whitespace()
            .map(|b| {
                u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("line {}: {b}: {e}", i + 1))
            })
            .collect::<Vec<_>>();
        assert!(!bytes.is_empty(), "line {}: no bytes", i + 1);
        let class = Class::from_name(class)
            .unwrap_or_else(|| panic!("line {}: unknown class {class:?}", i + 1));
        vectors.push(Vector {
            line: i + 1,
            bytes,
            class,
            comment: comment.unwrap_or("").to_string(),
        });
    }
    vectors
}

#[test]
fn class_vectors() {
    let vectors = parse(include_str!("vectors/classes.txt"));
    let mut failures = Vec::new();
    for v in &vectors {
        let instr = Decoder::with_ip(32, &v.bytes, 0x1000, DecoderOptions::NONE).decode();
        let got = classify(&instr);
        if instr.is_invalid() || instr.len() != v.bytes.len() || got != v.class {
            failures.push(format!(
                "line {}: {:02X?} ({}): decoded {:?} len {} class {}, expected len {} class {}",
                v.line,
                v.bytes,
                v.comment,
                instr.code(),
                instr.len(),
                got.name(),
                v.bytes.len(),
                v.class.name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let covered: BTreeSet<Class> = vectors.iter().map(|v| v.class).collect();
    let missing: Vec<&str> = Class::ALL
        .iter()
        .filter(|c| !covered.contains(c))
        .map(|c| c.name())
        .collect();
    assert!(missing.is_empty(), "classes without a vector: {missing:?}");
}
