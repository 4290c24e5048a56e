//! Reading kernel-policy and default-table files (TOML), with errors that name the line
//! and field at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use services::{ParamValue, RegistryError, ServiceParams, ServiceRegistry, ServiceType};
use toml::Spanned;

use crate::binding::{
    Binding, BufferArg, Convention, EntryPoint, LenUnit, Operation, Returns, MAX_ARGS,
    MAX_BUFFER_BYTES,
};
use crate::nodes::NODE_TYPES;
use crate::policy::{NodeMode, Policy, PolicyError, ServiceSpec, DEFAULT_NODE_TIMEOUT};

/// Longest node timeout a policy may ask for: a vCPU waits this long at most.
const MAX_NODE_TIMEOUT_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    services: BTreeMap<Spanned<String>, Spanned<RawSpec>>,
    #[serde(default)]
    bindings: Vec<Spanned<RawBinding>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    services: BTreeMap<Spanned<String>, Spanned<RawSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    id: Spanned<String>,
    node: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    symbol: Option<Spanned<String>>,
    address: Option<Spanned<i64>>,
    op: Spanned<String>,
    convention: Option<Spanned<String>>,
    args: Option<Spanned<i64>>,
    sector_arg: Option<Spanned<i64>>,
    timeout_arg: Option<Spanned<i64>>,
    buffer: Option<Spanned<RawBuffer>>,
    returns: Option<Spanned<String>>,
    error_return: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    ptr: Spanned<i64>,
    len: Spanned<i64>,
    max: Spanned<i64>,
    unit: Option<Spanned<String>>,
}

/// Where in the text an error is, and how to say it.
struct Ctx<'a> {
    src: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = self.src.get(..offset).unwrap_or(self.src);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    fn invalid(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        found: impl Into<String>,
        expected: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line(span),
            field: field.into(),
            found: found.into(),
            expected: expected.into(),
        }
    }

    fn syntax(&self, err: &toml::de::Error) -> PolicyError {
        let (line, column) = err.span().map_or((1, 1), |span| self.line_col(span.start));
        PolicyError::Syntax {
            origin: self.origin.to_owned(),
            line,
            column,
            field: self.field_at(line),
            message: err.message().trim().to_owned(),
        }
    }

    /// The dotted field a line sets (`services.tty.id`), from the table header above
    /// it and the key on it; "" when the line sets none (a header, a broken line).
    fn field_at(&self, line: usize) -> String {
        let lines: Vec<&str> = self.src.lines().collect();
        let Some(text) = lines.get(line.wrapping_sub(1)) else {
            return String::new();
        };
        let Some((key, _)) = text.split_once('=') else {
            return String::new();
        };
        let key = key.trim();
        let table = lines[..line - 1]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('['))
            .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim());
        match table {
            Some(t) if !t.is_empty() => format!("{t}.{key}"),
            _ => key.to_owned(),
        }
    }
}

pub(crate) fn policy(
    src: &str,
    origin: &str,
    registry: &ServiceRegistry,
) -> Result<Policy, PolicyError> {
    let cx = Ctx { src, origin };
    let raw: RawPolicy = toml::from_str(src).map_err(|e| cx.syntax(&e))?;
    let services = services_table(&cx, raw.services, registry)?;
    let bindings = raw
        .bindings
        .into_iter()
        .enumerate()
        .map(|(i, b)| binding(&cx, i, b))
        .collect::<Result<_, _>>()?;
    Ok(Policy { services, bindings })
}

pub(crate) fn defaults(
    src: &str,
    origin: &str,
    registry: &ServiceRegistry,
) -> Result<BTreeMap<ServiceType, ServiceSpec>, PolicyError> {
    let cx = Ctx { src, origin };
    let raw: RawDefaults = toml::from_str(src).map_err(|e| cx.syntax(&e))?;
    services_table(&cx, raw.services, registry)
}

fn services_table(
    cx: &Ctx<'_>,
    raw: BTreeMap<Spanned<String>, Spanned<RawSpec>>,
    registry: &ServiceRegistry,
) -> Result<BTreeMap<ServiceType, ServiceSpec>, PolicyError> {
    let mut out = BTreeMap::new();
    for (key, spec) in raw {
        let ty: ServiceType = key.get_ref().parse().map_err(|_| {
            cx.invalid(
                &key.span(),
                format!("services.{}", key.get_ref()),
                format!("unknown service type `{}`", key.get_ref()),
                "one of tty, block, clock, idle, security, memory, io_scheduling, \
                 interrupts, filesystem",
            )
        })?;
        out.insert(ty, service_spec(cx, ty, spec, registry)?);
    }
    Ok(out)
}

fn service_spec(
    cx: &Ctx<'_>,
    ty: ServiceType,
    spec: Spanned<RawSpec>,
    registry: &ServiceRegistry,
) -> Result<ServiceSpec, PolicyError> {
    let line = cx.line(&spec.span());
    let spec = spec.into_inner();
    let field = |f: &str| format!("services.{ty}.{f}");
    let node_span = spec.node.as_ref().map_or(0..0, Spanned::span);
    let node = spec
        .node
        .map(|n| {
            n.get_ref().parse::<SocketAddr>().map_err(|_| {
                cx.invalid(
                    &n.span(),
                    field("node"),
                    format!("{:?}", n.get_ref()),
                    "a service-node address IP:PORT, e.g. \"127.0.0.1:7000\"",
                )
            })
        })
        .transpose()?;
    let timeout = match spec.timeout_ms {
        None => DEFAULT_NODE_TIMEOUT,
        Some(t) => match u64::try_from(*t.get_ref()) {
            Ok(ms @ 1..=MAX_NODE_TIMEOUT_MS) => Duration::from_millis(ms),
            _ => {
                return Err(cx.invalid(
                    &t.span(),
                    field("timeout_ms"),
                    t.get_ref().to_string(),
                    format!("milliseconds from 1 to {MAX_NODE_TIMEOUT_MS}"),
                ))
            }
        },
    };
    let mode = match &spec.mode {
        None => NodeMode::Perform,
        Some(m) => {
            let mode = match m.get_ref().as_str() {
                "perform" => NodeMode::Perform,
                "ship" => NodeMode::Ship,
                other => {
                    return Err(cx.invalid(
                        &m.span(),
                        field("mode"),
                        format!("{other:?}"),
                        "\"perform\" or \"ship\"",
                    ))
                }
            };
            // Only tty.write has shippable code, and only a node ships.
            if mode == NodeMode::Ship && (node.is_none() || ty != ServiceType::Tty) {
                return Err(cx.invalid(
                    &m.span(),
                    field("mode"),
                    "\"ship\"",
                    "\"ship\" only for a tty service with a `node`",
                ));
            }
            mode
        }
    };
    let mut params = ServiceParams::new();
    for (name, value) in spec.params {
        let span = value.span();
        let v = param_value(value.into_inner()).map_err(|found| {
            cx.invalid(
                &span,
                field(&format!("params.{name}")),
                found,
                "a string, an integer, a boolean or a list of strings",
            )
        })?;
        params.0.insert(name, v);
    }
    let id_span = spec.id.span();
    let id = spec.id.into_inner();
    if node.is_some() {
        // A node names and configures its own services; only the type can be checked.
        if !NODE_TYPES.contains(&ty) {
            return Err(cx.invalid(
                &node_span,
                field("node"),
                format!("a node for a {ty} service"),
                "a node only for block or tty (service nodes perform those)",
            ));
        }
        if id.is_empty() {
            return Err(cx.invalid(&id_span, field("id"), "\"\"", "the node's service id"));
        }
    } else {
        registry
            .validate(ty, &id, &params)
            .map_err(|e| registry_error(cx, &id_span, &field, e))?;
    }
    Ok(ServiceSpec {
        id,
        node,
        timeout,
        mode,
        params,
        line,
    })
}

fn registry_error(
    cx: &Ctx<'_>,
    id_span: &Range<usize>,
    field: &dyn Fn(&str) -> String,
    e: RegistryError,
) -> PolicyError {
    match e {
        RegistryError::UnknownId { ty, id, known } => cx.invalid(
            id_span,
            field("id"),
            format!("unknown {ty} service `{id}`"),
            if known.is_empty() {
                format!("no id: type `{ty}` has no services yet")
            } else {
                format!("one of {known}")
            },
        ),
        RegistryError::Reserved { ty } => cx.invalid(
            id_span,
            field("id"),
            format!("a service for reserved type `{ty}`"),
            "a type with services: tty, block, clock, idle, security",
        ),
        RegistryError::MissingParam {
            param, expected, ..
        } => cx.invalid(
            id_span,
            field(&format!("params.{param}")),
            "nothing",
            expected,
        ),
        RegistryError::UnknownParam { param, allowed, .. } => cx.invalid(
            id_span,
            field(&format!("params.{param}")),
            "a parameter this service does not take",
            format!("one of: {allowed}"),
        ),
        RegistryError::BadParam { source, .. } => cx.invalid(
            id_span,
            field(&format!("params.{}", source.name)),
            source.found,
            source.expected,
        ),
        RegistryError::Service { source, .. } => cx.invalid(
            id_span,
            field("id"),
            source.to_string(),
            "a service that can start",
        ),
    }
}

fn param_value(v: toml::Value) -> Result<ParamValue, String> {
    match v {
        toml::Value::String(s) => Ok(ParamValue::Str(s)),
        toml::Value::Integer(i) => Ok(ParamValue::Int(i)),
        toml::Value::Boolean(b) => Ok(ParamValue::Bool(b)),
        toml::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                toml::Value::String(s) => Ok(s),
                other => Err(format!("a list holding {}", other.type_str())),
            })
            .collect::<Result<_, _>>()
            .map(ParamValue::List),
        other => Err(other.type_str().to_owned()),
    }
}

/// An argument index must lie inside the argument count.
fn arg_index(cx: &Ctx<'_>, v: &Spanned<i64>, field: String, args: u32) -> Result<u32, PolicyError> {
    match u32::try_from(*v.get_ref()) {
        Ok(i) if i < args => Ok(i),
        _ => Err(cx.invalid(
            &v.span(),
            field,
            v.get_ref().to_string(),
            format!("an argument index from 0 to {}", args.saturating_sub(1)),
        )),
    }
}

fn binding(cx: &Ctx<'_>, i: usize, raw: Spanned<RawBinding>) -> Result<Binding, PolicyError> {
    let span = raw.span();
    let line = cx.line(&span);
    let raw = raw.into_inner();
    let field = |f: &str| format!("bindings[{i}].{f}");

    let entry = match (&raw.symbol, &raw.address) {
        (Some(s), None) if !s.get_ref().is_empty() => EntryPoint::Symbol(s.get_ref().clone()),
        (None, Some(a)) => EntryPoint::Address(u32::try_from(*a.get_ref()).map_err(|_| {
            cx.invalid(
                &a.span(),
                field("address"),
                a.get_ref().to_string(),
                "a guest linear address from 0 to 0xffffffff",
            )
        })?),
        (Some(_), Some(a)) => {
            return Err(cx.invalid(
                &a.span(),
                field("address"),
                "both `symbol` and `address`",
                "exactly one of `symbol` or `address`",
            ))
        }
        (Some(s), None) => {
            return Err(cx.invalid(&s.span(), field("symbol"), "\"\"", "a symbol name"))
        }
        (None, None) => {
            return Err(cx.invalid(
                &span,
                format!("bindings[{i}]"),
                "neither `symbol` nor `address`",
                "exactly one of `symbol` or `address`",
            ))
        }
    };

    let op: Operation = raw.op.get_ref().parse().map_err(|()| {
        let known: Vec<&str> = Operation::ALL.iter().map(|o| o.name()).collect();
        cx.invalid(
            &raw.op.span(),
            field("op"),
            format!("{:?}", raw.op.get_ref()),
            format!("one of {}", known.join(", ")),
        )
    })?;

    let convention = match &raw.convention {
        None => Convention::Cdecl,
        Some(c) => c.get_ref().parse().map_err(|()| {
            cx.invalid(
                &c.span(),
                field("convention"),
                format!("{:?}", c.get_ref()),
                "one of cdecl, regparm3, stdcall",
            )
        })?,
    };

    // Without an explicit count the function takes exactly the arguments it names.
    let named = [
        raw.sector_arg.as_ref(),
        raw.timeout_arg.as_ref(),
        raw.buffer.as_ref().map(|b| &b.get_ref().ptr),
        raw.buffer.as_ref().map(|b| &b.get_ref().len),
    ];
    let args = match &raw.args {
        Some(a) => match u32::try_from(*a.get_ref()) {
            Ok(n) if n <= MAX_ARGS => n,
            _ => {
                return Err(cx.invalid(
                    &a.span(),
                    field("args"),
                    a.get_ref().to_string(),
                    format!("an argument count from 0 to {MAX_ARGS}"),
                ))
            }
        },
        None => named
            .iter()
            .flatten()
            .map(|v| u32::try_from(*v.get_ref()).map_or(MAX_ARGS, |n| n.saturating_add(1)))
            .max()
            .unwrap_or(0)
            .min(MAX_ARGS),
    };

    let sector_arg = match (&raw.sector_arg, op.needs_sector()) {
        (Some(v), true) => Some(arg_index(cx, v, field("sector_arg"), args)?),
        (None, false) => None,
        (None, true) => {
            return Err(cx.invalid(
                &span,
                field("sector_arg"),
                "nothing",
                format!("the index of the sector argument of `{op}`"),
            ))
        }
        (Some(v), false) => {
            return Err(cx.invalid(
                &v.span(),
                field("sector_arg"),
                "a sector argument",
                format!("none: `{op}` takes no sector"),
            ))
        }
    };

    let timeout_arg = match &raw.timeout_arg {
        None => None,
        Some(v) if op.takes_timeout() => Some(arg_index(cx, v, field("timeout_arg"), args)?),
        Some(v) => {
            return Err(cx.invalid(
                &v.span(),
                field("timeout_arg"),
                "a timeout argument",
                format!("none: `{op}` takes no timeout"),
            ))
        }
    };

    let buffer = match (&raw.buffer, op.buffer()) {
        (Some(b), Some(_)) => Some(buffer(cx, b, &field, args, op)?),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(cx.invalid(
                &span,
                field("buffer"),
                "nothing",
                format!("`{{ ptr = N, len = N, max = BYTES }}`: `{op}` moves a guest buffer"),
            ))
        }
        (Some(b), None) => {
            return Err(cx.invalid(
                &b.span(),
                field("buffer"),
                "a buffer",
                format!("none: `{op}` takes no buffer"),
            ))
        }
    };

    let mut used: Vec<(u32, &str)> = Vec::new();
    used.extend(sector_arg.map(|a| (a, "sector_arg")));
    used.extend(timeout_arg.map(|a| (a, "timeout_arg")));
    if let Some(b) = &buffer {
        used.push((b.ptr, "buffer.ptr"));
        used.push((b.len, "buffer.len"));
    }
    for (n, (a, name)) in used.iter().enumerate() {
        if let Some((_, other)) = used[..n].iter().find(|(b, _)| b == a) {
            return Err(cx.invalid(
                &span,
                field(name),
                format!("argument {a}, already used as `{other}`"),
                "a different argument for each role",
            ));
        }
    }

    let returns = match &raw.returns {
        None => op.returns()[0],
        Some(r) => r
            .get_ref()
            .parse::<Returns>()
            .ok()
            .filter(|r| op.returns().contains(r))
            .ok_or_else(|| {
                let ok: Vec<&str> = op.returns().iter().map(|r| r.name()).collect();
                cx.invalid(
                    &r.span(),
                    field("returns"),
                    format!("{:?}", r.get_ref()),
                    format!("for `{op}` one of {}", ok.join(", ")),
                )
            })?,
    };

    let error_return = match &raw.error_return {
        None => u32::MAX,
        Some(e) => {
            let v = *e.get_ref();
            // Negative errors (-EIO) are written as the i32 they are; the guest sees
            // the same bits either way.
            if let Ok(neg) = i32::try_from(v) {
                u32::from_ne_bytes(neg.to_ne_bytes())
            } else {
                u32::try_from(v).map_err(|_| {
                    cx.invalid(
                        &e.span(),
                        field("error_return"),
                        v.to_string(),
                        "a 32-bit value from -2147483648 to 4294967295",
                    )
                })?
            }
        }
    };

    Ok(Binding {
        entry,
        op,
        convention,
        args,
        sector_arg,
        timeout_arg,
        buffer,
        returns,
        error_return,
        line,
    })
}

fn buffer(
    cx: &Ctx<'_>,
    raw: &Spanned<RawBuffer>,
    field: &dyn Fn(&str) -> String,
    args: u32,
    op: Operation,
) -> Result<BufferArg, PolicyError> {
    let b = raw.get_ref();
    let ptr = arg_index(cx, &b.ptr, field("buffer.ptr"), args)?;
    let len = arg_index(cx, &b.len, field("buffer.len"), args)?;
    let max_bytes = match u32::try_from(*b.max.get_ref()) {
        Ok(m @ 1..=MAX_BUFFER_BYTES) => m,
        _ => {
            return Err(cx.invalid(
                &b.max.span(),
                field("buffer.max"),
                b.max.get_ref().to_string(),
                format!("a byte count from 1 to {MAX_BUFFER_BYTES}"),
            ))
        }
    };
    let is_block = op.service_type() == ServiceType::Block;
    let unit = match &b.unit {
        None => LenUnit::Bytes,
        Some(u) => match u.get_ref().as_str() {
            "bytes" => LenUnit::Bytes,
            "sectors" if is_block => LenUnit::Sectors,
            other => {
                return Err(cx.invalid(
                    &u.span(),
                    field("buffer.unit"),
                    format!("{other:?}"),
                    if is_block {
                        "\"bytes\" or \"sectors\""
                    } else {
                        "\"bytes\""
                    },
                ))
            }
        },
    };
    Ok(BufferArg {
        ptr,
        len,
        max_bytes,
        unit,
    })
}
