//! Security services: whether a proxied call may proceed, and the record of calls.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Service, ServiceError};

/// A proxied guest call, as the security service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// The operation (`"tty.write"`, `"block.read"`, ...).
    pub op: String,
    /// Guest linear address of the entry point.
    pub entry: u32,
    /// The entry point's symbol, when bound by name.
    pub symbol: Option<String>,
    /// Whether the guest called from user mode (virtual CPL 3).
    pub user_caller: bool,
    /// The call's 32-bit arguments, as read.
    pub args: Vec<u32>,
}

/// A security decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The call may proceed.
    Allow,
    /// The call is refused.
    Deny {
        /// Why.
        reason: String,
    },
}

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The call.
    pub call: CallInfo,
    /// Whether it was allowed.
    pub allowed: bool,
    /// The value returned to the guest in EAX.
    pub eax: u32,
}

/// Decides on and audits proxied calls.
pub trait Security: Service {
    /// Decides whether `call` may proceed.
    ///
    /// # Errors
    /// When the service cannot decide (it is then inaccessible, and the proxy asks the
    /// default security service).
    fn check(&self, call: &CallInfo) -> Result<Decision, ServiceError>;

    /// Records a finished (or refused) call. The default records nothing.
    fn audit(&self, _record: &AuditRecord) {}
}

/// Allows every call and records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Service for AllowAll {
    fn id(&self) -> &str {
        "allow-all"
    }
}

impl Security for AllowAll {
    fn check(&self, _call: &CallInfo) -> Result<Decision, ServiceError> {
        Ok(Decision::Allow)
    }
}

/// Allows every call and records each one, in memory and optionally as lines appended
/// to a file.
#[derive(Debug, Default)]
pub struct AuditLog {
    records: Mutex<Vec<AuditRecord>>,
    file: Option<(PathBuf, Mutex<File>)>,
}

impl AuditLog {
    /// An in-memory audit log.
    pub fn new() -> Self {
        AuditLog::default()
    }

    /// An audit log that also appends one line per call to `path`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn with_file(path: &Path) -> Result<Self, ServiceError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ServiceError::io("open", path.display().to_string(), e))?;
        Ok(AuditLog {
            records: Mutex::default(),
            file: Some((path.to_owned(), Mutex::new(file))),
        })
    }

    /// The calls recorded so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().clone()
    }
}

impl Service for AuditLog {
    fn id(&self) -> &str {
        "audit-log"
    }
}

impl Security for AuditLog {
    fn check(&self, _call: &CallInfo) -> Result<Decision, ServiceError> {
        Ok(Decision::Allow)
    }

    fn audit(&self, record: &AuditRecord) {
        if let Some((path, file)) = &self.file {
            let c = &record.call;
            let line = format!(
                "op={} entry={:#010x} symbol={} user={} args={:x?} allowed={} eax={:#x}\n",
                c.op,
                c.entry,
                c.symbol.as_deref().unwrap_or("-"),
                c.user_caller,
                c.args,
                record.allowed,
                record.eax
            );
            // The audit must not fail the guest's call; a lost line is reported instead.
            if let Err(e) = file.lock().write_all(line.as_bytes()) {
                log::error!("audit log {}: {e}", path.display());
            }
        }
        self.records.lock().push(record.clone());
    }
}

/// Denies the named operations, allows the rest.
#[derive(Debug, Default, Clone)]
pub struct DenyList {
    denied: BTreeSet<String>,
}

impl DenyList {
    /// Denies every operation in `ops` (`"block.write"`, ...).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(ops: I) -> Self {
        DenyList {
            denied: ops.into_iter().map(Into::into).collect(),
        }
    }
}

impl Service for DenyList {
    fn id(&self) -> &str {
        "deny-list"
    }
}

impl Security for DenyList {
    fn check(&self, call: &CallInfo) -> Result<Decision, ServiceError> {
        Ok(if self.denied.contains(&call.op) {
            Decision::Deny {
                reason: format!("`{}` is on the deny list", call.op),
            }
        } else {
            Decision::Allow
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(op: &str) -> CallInfo {
        CallInfo {
            op: op.into(),
            entry: 0xc010_0000,
            symbol: Some("f".into()),
            user_caller: false,
            args: vec![1, 2],
        }
    }

    #[test]
    fn deny_list_denies_only_named_ops() {
        let s = DenyList::new(["block.write"]);
        assert!(matches!(
            s.check(&call("block.write")).unwrap(),
            Decision::Deny { .. }
        ));
        assert_eq!(s.check(&call("block.read")).unwrap(), Decision::Allow);
    }

    #[test]
    fn audit_log_records_in_memory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let s = AuditLog::with_file(&path).unwrap();
        assert_eq!(s.check(&call("tty.write")).unwrap(), Decision::Allow);
        s.audit(&AuditRecord {
            call: call("tty.write"),
            allowed: true,
            eax: 5,
        });
        assert_eq!(s.records().len(), 1);
        assert_eq!(s.records()[0].eax, 5);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("op=tty.write entry=0xc0100000 symbol=f"),
            "{text}"
        );
        assert!(text.contains("eax=0x5"), "{text}");
    }

    #[test]
    fn allow_all_allows() {
        assert_eq!(AllowAll.check(&call("x")).unwrap(), Decision::Allow);
    }
}
