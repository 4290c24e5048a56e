//! Symbols that name guest code, and attribution of an address to `name+0xoff`.

use std::fmt;

use vmm::addr::GuestLinear;

/// How much a symbol tells about the code it names (ordered: a function tells more).
pub use vmm::loader::elf::SymbolKind;

/// A named address in guest code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// The symbol's name.
    pub name: String,
    /// Its guest linear address.
    pub start: GuestLinear,
    /// Its size in bytes as recorded (`st_size`), 0 when unknown.
    pub size: u32,
    /// What kind of symbol it is.
    pub kind: SymbolKind,
}

impl Symbol {
    /// The end of the symbol's extent (exclusive) when it has one.
    pub fn end(&self) -> Option<u64> {
        (self.size != 0).then(|| u64::from(self.start.raw()) + u64::from(self.size))
    }

    /// Whether this is a function whose bytes are delimited, the kind ground truth can be
    /// computed for.
    pub fn is_sized_function(&self) -> bool {
        self.kind == SymbolKind::Function && self.size != 0
    }
}

/// An address expressed relative to the symbol that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymbolRef<'a> {
    /// The symbol holding the address.
    pub symbol: &'a Symbol,
    /// Offset of the address from the symbol's start.
    pub offset: u32,
}

impl fmt::Display for SymbolRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.symbol.name, self.offset)
    }
}

/// Code symbols sorted by address, one per address.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    symbols: Vec<Symbol>,
    /// For each symbol, the end of the region it lies in: an unsized label never extends
    /// past the section that holds it.
    limits: Vec<u64>,
}

impl SymbolTable {
    /// Builds the table from symbols and the `[start, end)` extents of the regions they
    /// may describe. Symbols outside every region are dropped; of several symbols at one
    /// address the most informative is kept (a sized function over an unsized one over a
    /// label, then the lexically first name so output is stable).
    pub fn new(mut symbols: Vec<Symbol>, regions: &[(u64, u64)]) -> Self {
        let region_end = |addr: u64| {
            regions
                .iter()
                .find(|&&(start, end)| start <= addr && addr < end)
                .map(|&(_, end)| end)
        };
        symbols.retain(|s| !s.name.is_empty() && region_end(u64::from(s.start.raw())).is_some());
        symbols.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(a.kind.cmp(&b.kind))
                .then((b.size != 0).cmp(&(a.size != 0)))
                .then(a.name.cmp(&b.name))
        });
        symbols.dedup_by(|later, first| later.start == first.start);
        let limits = symbols
            .iter()
            .map(|s| region_end(u64::from(s.start.raw())).unwrap_or(0))
            .collect();
        Self { symbols, limits }
    }

    /// All symbols, sorted by address.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Functions with a known extent, sorted by address.
    pub fn sized_functions(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols.iter().filter(|s| s.is_sized_function())
    }

    /// The symbol holding `addr`: the nearest symbol at or below it, if its extent
    /// covers `addr` (a sized symbol up to its size, an unsized one up to the next symbol
    /// or the end of its region).
    pub fn lookup(&self, addr: GuestLinear) -> Option<SymbolRef<'_>> {
        let idx = self
            .symbols
            .partition_point(|s| s.start <= addr)
            .checked_sub(1)?;
        let symbol = &self.symbols[idx];
        let end = symbol.end().unwrap_or(self.limits[idx]);
        (u64::from(addr.raw()) < end).then(|| SymbolRef {
            symbol,
            offset: addr.raw() - symbol.start.raw(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, start: u32, size: u32, kind: SymbolKind) -> Symbol {
        Symbol {
            name: name.into(),
            start: GuestLinear(start),
            size,
            kind,
        }
    }

    #[test]
    fn lookup_respects_extents() {
        let table = SymbolTable::new(
            vec![
                sym("f", 0x1000, 0x10, SymbolKind::Function),
                sym("label", 0x1020, 0, SymbolKind::Label),
                sym("outside", 0x9000, 4, SymbolKind::Function),
            ],
            &[(0x1000, 0x1040)],
        );
        assert_eq!(table.symbols().len(), 2);
        let at = |a| table.lookup(GuestLinear(a)).map(|r| r.to_string());
        assert_eq!(at(0x0fff), None);
        assert_eq!(at(0x1000).as_deref(), Some("f+0x0"));
        assert_eq!(at(0x100f).as_deref(), Some("f+0xf"));
        // Padding between a sized function and the next symbol belongs to nobody.
        assert_eq!(at(0x1010), None);
        assert_eq!(at(0x103f).as_deref(), Some("label+0x1f"));
        assert_eq!(at(0x1040), None);
    }

    #[test]
    fn aliases_keep_the_sized_function() {
        let table = SymbolTable::new(
            vec![
                sym("b_label", 0x10, 0, SymbolKind::Label),
                sym("z_func", 0x10, 8, SymbolKind::Function),
                sym("a_func", 0x10, 0, SymbolKind::Function),
            ],
            &[(0, 0x100)],
        );
        assert_eq!(table.symbols().len(), 1);
        assert_eq!(table.symbols()[0].name, "z_func");
    }
}
