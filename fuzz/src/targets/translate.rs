//! The block translator: arbitrary guest code pages and entry EIPs, in 16- and 32-bit
//! code segments, under varied configurations.
//!
//! Input layout: a flags byte (code size, FPU exits, stack size, a second code page, a
//! segment with a base and a short limit), the block-size cap, the entry offset, the
//! TC address, then the code pages' bytes.
//!
//! Promises checked: the translator returns a block or a refusal, never panics; a
//! refusal is only one the CPU would raise at the entry (a fetch fault or the segment
//! limit), never an encoder failure or an invalid block; every block passes
//! [`rewriter::translate::validate`], also with each chainable exit chained to the
//! block's own entry and then unchained; the side table stays inside the block.

use crate::input::Input;
use rewriter::translate::{
    translate_block, validate, CodeSegment, CodeSize, GuestPages, Refusal, Rules, StackSize,
    TranslateConfig,
};

/// Linear address of the first code page.
const PAGE: u32 = 0x0001_0000;

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let max = input.u8();
    let entry_offset = u32::from(input.u16()) & 0x1fff;
    let limit_raw = input.u16();
    // A TC address in the monitor window's range, 16-byte aligned as the cache lays
    // blocks out.
    let tc_address = 0xF000_0000 | (input.u32() & 0x00FF_FFF0);
    let code = input.rest();

    let mut pages = GuestPages::new();
    let first = code.get(..code.len().min(4096)).unwrap_or_default();
    pages.map(PAGE, u64::from(PAGE), first);
    if flags & 8 != 0 {
        let second = code.get(4096..code.len().min(8192)).unwrap_or_default();
        // A second page, at a physical address that is not the next one.
        pages.map(PAGE + 4096, 0x0050_0000, second);
    }
    let size = if flags & 1 != 0 {
        CodeSize::Bits16
    } else {
        CodeSize::Bits32
    };
    let cs = if flags & 16 != 0 {
        // A segment based at the page, with a limit that may end inside the code.
        CodeSegment {
            base: PAGE,
            limit: u32::from(limit_raw),
            size,
        }
    } else if size == CodeSize::Bits16 {
        CodeSegment::real16(PAGE)
    } else {
        CodeSegment::FLAT32
    };
    let entry_eip = if cs.base == PAGE {
        entry_offset
    } else {
        PAGE + entry_offset
    };
    let cfg = TranslateConfig {
        exit_fpu: flags & 2 != 0,
        stack_size: if flags & 4 != 0 {
            StackSize::Bits16
        } else {
            StackSize::Bits32
        },
        max_instructions: usize::from(max % 64) + 1,
        inline_if: flags & 8 != 0,
        selectors: (flags & 16 != 0).then_some([0x23, 0x1b, 0x23, 0x23, 0x3b, 0x33]),
        ..TranslateConfig::default()
    };

    let block = match translate_block(&pages, entry_eip, cs, tc_address, &cfg) {
        Ok(b) => b,
        Err(Refusal::Fetch { .. } | Refusal::SegmentLimit { .. }) => return,
        Err(e) => panic!("the translator refused {entry_eip:#x} with a bug: {e}"),
    };
    assert_eq!(block.guest_eip, entry_eip);
    assert_eq!(block.tc_address, tc_address);
    assert!(!block.pages.is_empty() && block.pages.len() <= 2);
    let len = u32::try_from(block.bytes.len()).expect("a block is small");
    assert!(block.entry_offset < len);
    for e in &block.side.entries {
        assert!(
            e.end() <= len,
            "side entry {e:?} past the block's {len} bytes"
        );
    }
    for x in &block.side.exits {
        assert!(x.offset < len, "exit {x:?} past the block's {len} bytes");
    }

    let start = u64::from(tc_address);
    let rules = Rules::new(&cfg, start..start + u64::from(len));
    if let Err(v) = validate(&block.bytes, tc_address, &rules) {
        panic!("block for {entry_eip:#x} breaks a rule: {v}");
    }

    // Chain every chainable exit to the block's own entry, then unchain them again.
    let entries = [block.entry()];
    let chained_rules = rules.with_entries(&entries);
    let mut bytes = block.bytes.clone();
    for (index, exit) in block.side.exits.iter().enumerate() {
        if exit.chain_slot.is_none() {
            continue;
        }
        let patch = block
            .chain(index, block.entry())
            .expect("a chainable exit chains");
        patch
            .apply(&mut bytes)
            .expect("the patch lies in the block");
    }
    if let Err(v) = validate(&bytes, tc_address, &chained_rules) {
        panic!("chained block for {entry_eip:#x} breaks a rule: {v}");
    }
    for (index, exit) in block.side.exits.iter().enumerate() {
        if exit.chain_slot.is_some() {
            let patch = block.unchain(index).expect("a chainable exit unchains");
            patch
                .apply(&mut bytes)
                .expect("the patch lies in the block");
        }
    }
    assert_eq!(bytes, block.bytes, "unchaining restores the block");
}
