//! Scan + classify throughput over Debian's i386 kernel text (bytes of code per second).
//!
//! Without the kernel (see `tests/common/kernel.rs` for where it is looked up) the
//! benchmark runs on a clearly labelled synthetic region: a repeated mix of real
//! instructions, which says less about real code.

// reason: a benchmark builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/kernel.rs"]
mod kernel;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rewriter::{scan_page, scan_region, BufferMemory, Census};
use shadow_paging::PAGE_SIZE;

/// A kernel-like instruction mix: prologues, loads, calls, branches and a few sensitive
/// instructions.
fn synthetic() -> Vec<(u32, Vec<u8>)> {
    const MIX: &[&[u8]] = &[
        &[0x55],
        &[0x89, 0xE5],
        &[0x57],
        &[0x56],
        &[0x53],
        &[0x83, 0xEC, 0x10],
        &[0x8B, 0x45, 0x08],
        &[0x8B, 0x54, 0x24, 0x04],
        &[0x85, 0xC0],
        &[0x74, 0x07],
        &[0xE8, 0x10, 0x00, 0x00, 0x00],
        &[0x9C],
        &[0xFA],
        &[0x89, 0x44, 0x8B, 0x10],
        &[0x0F, 0xB6, 0x41, 0x03],
        &[0x64, 0xA1, 0x00, 0x00, 0x00, 0x00],
        &[0x9D],
        &[0x5B],
        &[0x5E],
        &[0x5F],
        &[0x5D],
        &[0xC3],
        &[0x8D, 0x76, 0x00],
    ];
    let bytes: Vec<u8> = MIX
        .iter()
        .copied()
        .cycle()
        .take(400_000)
        .flatten()
        .copied()
        .collect();
    vec![(0xC100_0000, bytes)]
}

fn bench(c: &mut Criterion) {
    let (label, regions) = match kernel::text_sections() {
        Some(texts) => (
            "debian-i386-kernel-text",
            texts.into_iter().map(|t| (t.address, t.bytes)).collect(),
        ),
        None => ("SYNTHETIC-instruction-mix", synthetic()),
    };
    let total: usize = regions.iter().map(|(_, b)| b.len()).sum();
    let mut census = Census::default();
    for (base, bytes) in &regions {
        census.add(&Census::from_region(&scan_region(bytes, *base, &[*base])));
    }
    eprintln!(
        "{label}: {total} bytes, {} instructions, {} invalid bytes, actions {:?}",
        census.instructions, census.invalid_bytes, census.actions
    );

    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(20);
    group.bench_function(format!("region/{label}"), |b| {
        b.iter(|| {
            for (base, bytes) in &regions {
                black_box(scan_region(black_box(bytes), *base, &[*base]));
            }
        })
    });
    // The floor: iced's linear decode alone, no boundaries or classes.
    group.bench_function(format!("iced-decode-only/{label}"), |b| {
        b.iter(|| {
            let mut instr = iced_x86::Instruction::default();
            let mut n = 0usize;
            for (base, bytes) in &regions {
                let mut d = iced_x86::Decoder::with_ip(
                    32,
                    bytes,
                    u64::from(*base),
                    iced_x86::DecoderOptions::NONE,
                );
                while d.can_decode() {
                    d.decode_out(&mut instr);
                    n += instr.len();
                }
            }
            black_box(n)
        })
    });
    // Page by page, as the engine scans on first execution.
    let mems: Vec<BufferMemory> = regions
        .iter()
        .map(|(base, bytes)| BufferMemory::new(*base, bytes.clone()))
        .collect();
    group.bench_function(format!("pages/{label}"), |b| {
        b.iter(|| {
            for mem in &mems {
                let end = mem.base as u64 + mem.bytes.len() as u64;
                let mut page = u64::from(mem.base & !(PAGE_SIZE - 1));
                while page < end {
                    let at = u32::try_from(page).expect("pages below 4 GiB");
                    black_box(scan_page(mem, at, &[]));
                    page += u64::from(PAGE_SIZE);
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
