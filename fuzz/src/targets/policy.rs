//! The kernel-policy and default-table parser (TOML), the binding of its entry points,
//! and the service specs service nodes take on their command line.
//!
//! Input: the text (invalid UTF-8 is replaced, as a file read lossily would be).
//!
//! Promises checked: no panic, also while an error message points at the line and
//! field at fault; a parsed policy's bindings place at their addresses or give a
//! [`proxy::BindError`].

use proxy::{DefaultTable, EntryPoints, Policy, SymbolMap};
use services::{ServiceRegistry, ServiceSpec, ServiceType};

/// Runs one case.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let registry = ServiceRegistry::new();
    match Policy::from_toml(&text, "fuzz.toml", &registry) {
        Ok(policy) => {
            let mut symbols = SymbolMap::new();
            symbols.insert("entry".to_owned(), vec![0x10_0000]);
            symbols.insert("twice".to_owned(), vec![0x10_0000, 0x10_0010]);
            if let Err(e) = EntryPoints::resolve(&policy.bindings, &symbols) {
                let _ = e.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Err(e) = DefaultTable::from_toml(&text, "defaults.toml", &registry) {
        let _ = e.to_string();
    }
    for line in text.lines() {
        let Some((ty, spec)) = line.split_once(':') else {
            continue;
        };
        let Ok(spec) = ServiceSpec::parse(spec) else {
            continue;
        };
        if let Ok(ty) = ty.parse::<ServiceType>() {
            if let Err(e) = registry.validate(ty, spec.service, &spec.params) {
                let _ = e.to_string();
            }
        }
    }
}
