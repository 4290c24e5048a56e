//! The command line itself: what `vmm --help` offers and how a command line that cannot
//! work is answered. (What the commands do is tested in the workspace's `tests` package.)

use std::process::Command;

fn vmm(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("the vmm binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_command() {
    let (status, stdout, _) = vmm(&["--help"]);
    assert_eq!(status, Some(0));
    let mut commands = vec!["run", "scan", "bench", "coverage"];
    if cfg!(feature = "kproxy") {
        commands.extend(["policy", "service-node"]);
    }
    for command in commands {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from:\n{stdout}"
        );
    }
}

#[test]
fn unknown_commands_and_flags_exit_with_the_usage_status() {
    for args in [&["frobnicate"][..], &["run", "--no-such-flag"], &[]] {
        let (status, _, stderr) = vmm(args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage"), "{args:?}: {stderr}");
    }
}
