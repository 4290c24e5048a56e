//! Parameters a policy gives a service (a path, a size, a list of names).

use std::collections::BTreeMap;
use std::fmt;

/// One parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamValue {
    /// A string (paths, modes).
    Str(String),
    /// An integer (sizes, steps).
    Int(i64),
    /// A flag.
    Bool(bool),
    /// A list of strings (operation names).
    List(Vec<String>),
}

impl ParamValue {
    /// The kind of value, as a policy file would spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            ParamValue::Str(_) => "a string",
            ParamValue::Int(_) => "an integer",
            ParamValue::Bool(_) => "a boolean",
            ParamValue::List(_) => "a list of strings",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Str(s) => write!(f, "{s:?}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::List(l) => write!(f, "{l:?}"),
        }
    }
}

/// The parameters of one service, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceParams(pub BTreeMap<String, ParamValue>);

/// A parameter that is present with the wrong kind of value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{name}` must be {expected}, found {found}")]
pub struct ParamTypeError {
    /// The parameter.
    pub name: String,
    /// What it should be.
    pub expected: &'static str,
    /// What it was.
    pub found: String,
}

impl ServiceParams {
    /// No parameters.
    pub fn new() -> Self {
        ServiceParams::default()
    }

    /// Adds a parameter (builder style).
    pub fn with(mut self, name: &str, value: ParamValue) -> Self {
        self.0.insert(name.to_owned(), value);
        self
    }

    fn mismatch(&self, name: &str, expected: &'static str, v: &ParamValue) -> ParamTypeError {
        ParamTypeError {
            name: name.to_owned(),
            expected,
            found: format!("{} ({v})", v.kind()),
        }
    }

    /// A string parameter, if present.
    ///
    /// # Errors
    /// When present with another kind of value.
    pub fn str(&self, name: &str) -> Result<Option<&str>, ParamTypeError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(ParamValue::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.mismatch(name, "a string", v)),
        }
    }

    /// A non-negative integer parameter, if present.
    ///
    /// # Errors
    /// When present with another kind of value, or negative.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ParamTypeError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(ParamValue::Int(i)) if *i >= 0 => Ok(Some(i.unsigned_abs())),
            Some(v) => Err(self.mismatch(name, "a non-negative integer", v)),
        }
    }

    /// A boolean parameter, if present.
    ///
    /// # Errors
    /// When present with another kind of value.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ParamTypeError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(ParamValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.mismatch(name, "a boolean", v)),
        }
    }

    /// A list-of-strings parameter, if present.
    ///
    /// # Errors
    /// When present with another kind of value.
    pub fn list(&self, name: &str) -> Result<Option<&[String]>, ParamTypeError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(ParamValue::List(l)) => Ok(Some(l)),
            Some(v) => Err(self.mismatch(name, "a list of strings", v)),
        }
    }

    /// The parameter names, for reporting unknown ones.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Why a `ID=SERVICE[,PARAM=VALUE...]` service spec could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No `=` between the id and the service.
    #[error("expected ID=SERVICE[,PARAM=VALUE...]")]
    NoService,
    /// The id before `=` is empty.
    #[error("the id is empty")]
    EmptyId,
    /// A parameter is not `PARAM=VALUE`.
    #[error("parameter {0:?} is not PARAM=VALUE")]
    BadParam(String),
}

/// A service spec as service nodes take them on their command line:
/// `ID=SERVICE[,PARAM=VALUE...]` — the id monitors name in their policy, the local
/// service that performs it, and its parameters (integers, `true`/`false`, else
/// strings).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec<'a> {
    /// The id monitors name.
    pub id: &'a str,
    /// The local service id.
    pub service: &'a str,
    /// Its parameters.
    pub params: ServiceParams,
}

impl<'a> ServiceSpec<'a> {
    /// Parses `ID=SERVICE[,PARAM=VALUE...]`.
    ///
    /// # Errors
    /// [`SpecError`] naming what is malformed.
    pub fn parse(spec: &'a str) -> Result<Self, SpecError> {
        let (id, rest) = spec.split_once('=').ok_or(SpecError::NoService)?;
        if id.is_empty() {
            return Err(SpecError::EmptyId);
        }
        let mut parts = rest.split(',');
        let service = parts.next().unwrap_or_default();
        let mut params = ServiceParams::new();
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| SpecError::BadParam(p.to_owned()))?;
            params = params.with(k, ParamValue::parse_cli(v));
        }
        Ok(Self {
            id,
            service,
            params,
        })
    }
}

impl ParamValue {
    /// A value as written on a command line: `true`/`false`, an integer, else a string.
    pub fn parse_cli(value: &str) -> Self {
        match value {
            "true" => ParamValue::Bool(true),
            "false" => ParamValue::Bool(false),
            v => v
                .parse::<i64>()
                .map_or_else(|_| ParamValue::Str(v.to_owned()), ParamValue::Int),
        }
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn service_specs() {
        let s = ServiceSpec::parse("disk0=cow,base=disk.img,ro=true,size=64").unwrap();
        assert_eq!((s.id, s.service), ("disk0", "cow"));
        assert_eq!(s.params.str("base"), Ok(Some("disk.img")));
        assert_eq!(s.params.bool("ro"), Ok(Some(true)));
        assert_eq!(s.params.u64("size"), Ok(Some(64)));
        assert_eq!(ServiceSpec::parse("disk0"), Err(SpecError::NoService));
        assert_eq!(ServiceSpec::parse("=file"), Err(SpecError::EmptyId));
        assert_eq!(
            ServiceSpec::parse("d=file,path"),
            Err(SpecError::BadParam("path".into()))
        );
    }
}
