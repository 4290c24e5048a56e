//! The one error type every service reports through.

use std::io;

/// Why a service could not perform a request.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service cannot be accessed at all (not running, unreachable, closed).
    #[error("service `{service}` is unavailable: {reason}")]
    Unavailable {
        /// The service id.
        service: String,
        /// What made it unavailable.
        reason: String,
    },
    /// A remote service did not answer in time.
    #[error("service `{service}` did not answer within {timeout_ms} ms")]
    Timeout {
        /// The service id.
        service: String,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// A block request reached past the end of the device.
    #[error("sector {sector} (+{count}) is beyond the device's {capacity} sectors")]
    OutOfRange {
        /// First sector of the request.
        sector: u64,
        /// Number of sectors requested.
        count: u64,
        /// Device capacity in sectors.
        capacity: u64,
    },
    /// A request's length is not what the service works in (e.g. not whole sectors).
    #[error("length {len} is not a multiple of {unit} bytes")]
    BadLength {
        /// The length given.
        len: usize,
        /// The unit the service needs.
        unit: usize,
    },
    /// The service refuses writes.
    #[error("service `{service}` is read-only")]
    ReadOnly {
        /// The service id.
        service: String,
    },
    /// A host I/O operation failed.
    #[error("{op} on {what}: {source}")]
    Io {
        /// What was being done (`"read"`, `"open"`, ...).
        op: &'static str,
        /// What it was done to (a path, `"stdout"`).
        what: String,
        /// The host error.
        #[source]
        source: io::Error,
    },
    /// The security service refused the call.
    #[error("operation `{op}` denied: {reason}")]
    Denied {
        /// The operation refused.
        op: String,
        /// Why.
        reason: String,
    },
}

impl ServiceError {
    /// Whether the error means the service cannot be accessed, so that another service
    /// of the same type should take over, rather than that this request was wrong.
    pub fn is_inaccessible(&self) -> bool {
        matches!(
            self,
            ServiceError::Unavailable { .. } | ServiceError::Timeout { .. }
        )
    }

    /// The error as an `io` error with a context, for short call sites.
    pub(crate) fn io(op: &'static str, what: impl Into<String>, source: io::Error) -> Self {
        ServiceError::Io {
            op,
            what: what.into(),
            source,
        }
    }
}
