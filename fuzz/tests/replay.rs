//! Replays every committed corpus file through its target on the stable toolchain, so
//! `cargo test --workspace` runs the seeds and every regression input found by fuzzing.

use std::fs;

#[test]
fn every_target_has_a_seed_corpus() {
    for (name, _) in fuzz::TARGETS {
        let dir = fuzz::corpus_dir(name);
        let n = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .count();
        assert!(n > 0, "{} holds no seed", dir.display());
    }
}

#[test]
fn corpora_replay_without_a_finding() {
    for (name, target) in fuzz::TARGETS {
        let dir = fuzz::corpus_dir(name);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        for path in files {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{name}: {}", path.display());
            target(&data);
        }
    }
}
