//! Builds every guest kernel in `kernels/` against the shared library in `lib/` with the
//! host gcc in 32-bit freestanding mode, and writes the guest table `guests.rs` to OUT_DIR.
//! The benchmark kernels in `bench/` are built the same way into their own table
//! (`benches.rs`), with the native host program of `bench/native/`: a static i386 Linux
//! executable running the same measuring code outside any virtual machine.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CFLAGS: &[&str] = &[
    "-m32",
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fno-asynchronous-unwind-tables",
    "-mno-sse",
    "-mno-mmx",
    "-O2",
    "-std=gnu11",
    "-Wall",
    "-Werror",
];

fn fail(msg: &str) -> ! {
    eprintln!("error: guests: {msg}");
    std::process::exit(1);
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {what} ({:?}): {e}", cmd.get_program())));
    if !out.status.success() {
        fail(&format!(
            "{what} failed: {:?}\n{}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// Sources with the given extensions in `dir`, sorted so the build is reproducible.
fn sources(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", dir.display())))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
        })
        .collect();
    v.sort();
    v
}

/// Checks up front that the toolchain can produce i386 objects, so a missing multilib
/// gives one clear message instead of a compiler error in the middle of the build.
fn check_toolchain(out: &Path) {
    let probe = out.join("probe.c");
    fs::write(&probe, "int probe(void) { return 0; }\n").expect("write probe");
    let obj = out.join("probe.o");
    let ok = Command::new("gcc")
        .args(CFLAGS)
        .arg("-c")
        .arg(&probe)
        .arg("-o")
        .arg(&obj)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        fail("gcc is missing or cannot compile for i386 (-m32); install gcc with 32-bit support");
    }
    let ok = Command::new("ld")
        .args(["-m", "elf_i386", "-r", "-o"])
        .arg(out.join("probe-r.o"))
        .arg(&obj)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        fail("ld is missing or cannot link i386 objects (-m elf_i386); install binutils");
    }
}

/// The one-line description of a guest: the text of its leading `/* ... */` comment.
fn description(src: &Path) -> String {
    let text = fs::read_to_string(src).unwrap_or_default();
    let first = text.lines().next().unwrap_or_default().trim();
    match first.strip_prefix("/*").and_then(|s| s.strip_suffix("*/")) {
        Some(d) => d.trim().to_string(),
        None => fail(&format!(
            "{}: first line must be a /* description */ comment",
            src.display()
        )),
    }
}

fn compile(src: &Path, obj: &Path, includes: &[&Path]) {
    run(
        Command::new("gcc")
            .args(CFLAGS)
            .args(includes.iter().flat_map(|i| [Path::new("-I"), i]))
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(obj),
        "gcc",
    );
}

/// Compiles and links every `*.c` kernel in `dir` to `<elf_prefix><name>.elf` and returns
/// the table entries (one `Guest { .. }` line each) and the kernel names.
fn build_kernels(
    dir: &Path,
    elf_prefix: &str,
    includes: &[&Path],
    lib_objs: &[PathBuf],
    script: &Path,
    out: &Path,
) -> (String, Vec<String>) {
    let mut entries = String::new();
    let mut names = Vec::new();
    for src in sources(dir, &["c"]) {
        println!("cargo:rerun-if-changed={}", src.display());
        let name = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_string();
        let obj = out.join(format!("{elf_prefix}kernel-{name}.o"));
        compile(&src, &obj, includes);
        let elf = out.join(format!("{elf_prefix}{name}.elf"));
        run(
            Command::new("ld")
                .args([
                    "-m",
                    "elf_i386",
                    "-nostdlib",
                    "--build-id=none",
                    "-z",
                    "noexecstack",
                    "-T",
                ])
                .arg(script)
                .arg("-o")
                .arg(&elf)
                .arg(&obj)
                .args(lib_objs),
            "ld",
        );
        writeln!(
            entries,
            "    Guest {{ name: {name:?}, path: {:?}, description: {:?} }},",
            elf.to_str().expect("utf-8 OUT_DIR"),
            description(&src)
        )
        .expect("write to string");
        names.push(name);
    }
    (entries, names)
}

/// Links the native benchmark program: one static, freestanding i386 Linux executable.
fn build_native(src: &Path, include: &Path, out: &Path) -> PathBuf {
    println!("cargo:rerun-if-changed={}", src.display());
    let exe = out.join("bench-native");
    run(
        Command::new("gcc")
            .args(CFLAGS)
            .arg("-I")
            .arg(include)
            .args([
                "-static",
                "-no-pie",
                "-Wl,--build-id=none",
                "-z",
                "noexecstack",
            ])
            .arg(src)
            .arg("-o")
            .arg(&exe),
        "gcc (native benchmark program)",
    );
    exe
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let lib_dir = root.join("lib");
    let kernels_dir = root.join("kernels");
    let bench_dir = root.join("bench");
    let script = lib_dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", lib_dir.display());
    println!("cargo:rerun-if-changed={}", kernels_dir.display());
    println!("cargo:rerun-if-changed={}", bench_dir.display());

    check_toolchain(&out);

    let mut lib_objs = Vec::new();
    for src in sources(&lib_dir, &["c", "S", "h", "ld"]) {
        println!("cargo:rerun-if-changed={}", src.display());
        let ext = src.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if ext == "h" || ext == "ld" {
            continue;
        }
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        let obj = out.join(format!("lib-{stem}-{ext}.o"));
        compile(&src, &obj, &[&lib_dir]);
        lib_objs.push(obj);
    }

    let (entries, names) = build_kernels(&kernels_dir, "", &[&lib_dir], &lib_objs, &script, &out);
    if !names.iter().any(|n| n == "demo") {
        fail("kernels/demo.c is missing: the crate exports the demo kernel's bytes");
    }
    let table = format!(
        "/// Every guest kernel this crate builds.\npub static GUESTS: &[Guest] = &[\n{entries}];\n"
    );
    fs::write(out.join("guests.rs"), table).expect("write guests.rs");

    for header in sources(&bench_dir, &["h"]) {
        println!("cargo:rerun-if-changed={}", header.display());
    }
    // Their own file names: a benchmark may share a test kernel's name.
    let (bench_entries, _) = build_kernels(
        &bench_dir,
        "bench-",
        &[&lib_dir, &bench_dir],
        &lib_objs,
        &script,
        &out,
    );
    let native = build_native(&bench_dir.join("native").join("main.c"), &bench_dir, &out);
    let table = format!(
        "/// Every benchmark kernel this crate builds.\npub static BENCHES: &[Guest] = &[\n{bench_entries}];\n\
         /// The native benchmark program.\npub static BENCH_NATIVE: &str = {:?};\n",
        native.to_str().expect("utf-8 OUT_DIR")
    );
    fs::write(out.join("benches.rs"), table).expect("write benches.rs");
}
