//! Fakes the unit and property tests share: guest RAM as a byte vector, and a host
//! address space that records what the mapper was told.

use std::collections::BTreeMap;

use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::decision::Prot;
use crate::memory::GuestPhysMemory;
use crate::state::HostMapper;

/// Guest RAM of a fixed size.
#[derive(Clone, Debug)]
pub struct FakeMemory {
    pub bytes: Vec<u8>,
}

impl FakeMemory {
    pub fn new(size: usize) -> Self {
        Self {
            bytes: vec![0; size],
        }
    }

    fn range(&self, gpa: GuestPhys, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa.0).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    pub fn set32(&mut self, gpa: u32, v: u32) {
        assert!(
            self.write_u32(GuestPhys(gpa), v),
            "test wrote outside RAM at {gpa:#x}"
        );
    }

    pub fn set64(&mut self, gpa: u32, v: u64) {
        assert!(
            self.write_u64(GuestPhys(gpa), v),
            "test wrote outside RAM at {gpa:#x}"
        );
    }

    pub fn get32(&self, gpa: u32) -> u32 {
        self.read_u32(GuestPhys(gpa))
            .expect("test read outside RAM")
    }

    pub fn get64(&self, gpa: u32) -> u64 {
        self.read_u64(GuestPhys(gpa))
            .expect("test read outside RAM")
    }
}

impl GuestPhysMemory for FakeMemory {
    fn read_u32(&self, gpa: GuestPhys) -> Option<u32> {
        let r = self.range(gpa, 4)?;
        Some(u32::from_le_bytes(self.bytes[r].try_into().ok()?))
    }
    fn read_u64(&self, gpa: GuestPhys) -> Option<u64> {
        let r = self.range(gpa, 8)?;
        Some(u64::from_le_bytes(self.bytes[r].try_into().ok()?))
    }
    fn write_u32(&mut self, gpa: GuestPhys, value: u32) -> bool {
        let Some(r) = self.range(gpa, 4) else {
            return false;
        };
        self.bytes[r].copy_from_slice(&value.to_le_bytes());
        true
    }
    fn write_u64(&mut self, gpa: GuestPhys, value: u64) -> bool {
        let Some(r) = self.range(gpa, 8) else {
            return false;
        };
        self.bytes[r].copy_from_slice(&value.to_le_bytes());
        true
    }
    fn ram_size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// The host address space below 4 GiB, page by page, plus a count of calls.
#[derive(Clone, Debug, Default)]
pub struct FakeMapper {
    pub pages: BTreeMap<u32, (GuestPhys, Prot)>,
    pub maps: usize,
    pub unmaps: usize,
    pub protects: usize,
}

impl FakeMapper {
    pub fn at(&self, lin: u32) -> Option<(GuestPhys, Prot)> {
        self.pages.get(&(lin >> 12)).copied()
    }

    fn pages_of(lin: GuestLinear, len: u32) -> std::ops::Range<u32> {
        assert_eq!(lin.0 % PAGE_SIZE, 0, "unaligned host call at {lin}");
        assert_eq!(len % PAGE_SIZE, 0, "host call of {len:#x} bytes");
        assert!(len > 0, "empty host call at {lin}");
        let first = lin.0 >> 12;
        let end = u64::from(first) + u64::from(len / PAGE_SIZE);
        assert!(end <= 1 << 20, "host call past 4 GiB at {lin}");
        first..u32::try_from(end).expect("checked above")
    }
}

impl HostMapper for FakeMapper {
    fn map(&mut self, lin: GuestLinear, gpa: GuestPhys, len: u32, prot: Prot) {
        self.maps += 1;
        for (k, n) in (0u32..).zip(Self::pages_of(lin, len)) {
            self.pages
                .insert(n, (GuestPhys(gpa.0 + k * PAGE_SIZE), prot));
        }
    }
    fn unmap(&mut self, lin: GuestLinear, len: u32) {
        self.unmaps += 1;
        for n in Self::pages_of(lin, len) {
            self.pages.remove(&n);
        }
    }
    fn protect(&mut self, lin: GuestLinear, len: u32, prot: Prot) {
        self.protects += 1;
        for n in Self::pages_of(lin, len) {
            // mprotect of an unmapped range fails with ENOMEM: the state must never ask.
            let page = self.pages.get_mut(&n).expect("protect of an unmapped page");
            page.1 = prot;
        }
    }
}
