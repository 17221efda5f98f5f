//! The syntaxes of configuration values: durations, booleans, Kubernetes CPU quantities,
//! thread counts, packet marks and names. Pure functions from text to typed values (`None`
//! when the text is not of the form); `env.rs` names the variable in the error.

use std::fmt::Write as _;
use std::time::Duration;

use super::WorkloadInfo;

/// Parses a duration: one or more `<integer><unit>` parts with units `ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h`, `d` (e.g. `1h30m`), or a bare integer meaning seconds. `None` on anything
/// else, including overflow.
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return None;
        }
        let n: u64 = rest[..digits_end].parse().ok()?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_end] {
            "ns" => Duration::from_nanos(n),
            "us" | "µs" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        rest = &rest[unit_end..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// Formats a duration in the syntax [`parse_duration`] reads back, largest units first
/// (`1h30m`, `500ms`, `0s`).
pub(super) fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1000 % 1000), "us"),
        (u64::from(nanos % 1000), "ns"),
    ];
    let mut out = String::new();
    for (n, unit) in parts.into_iter().filter(|(n, _)| *n > 0) {
        // Writing to a String cannot fail.
        let _ = write!(out, "{n}{unit}");
    }
    out
}

/// Serializes a duration as [`format_duration`] text, for the config dump.
pub(super) fn serialize_duration<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_duration(*duration))
}

/// Like [`serialize_duration`], `null` for `None` (turned off).
pub(super) fn serialize_optional_duration<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serialize_duration(d, serializer),
        None => serializer.serialize_none(),
    }
}

/// A Kubernetes namespace name: an RFC 1123 label.
pub(super) fn is_namespace_name(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}

/// RFC 9110 `tchar`.
pub(super) fn is_header_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_workload_info(value: &str) -> Option<WorkloadInfo> {
    let mut parts = value.split('/');
    let (Some(namespace), Some(name), Some(service_account), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if namespace.is_empty() || name.is_empty() || service_account.is_empty() {
        return None;
    }
    Some(WorkloadInfo {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service_account: service_account.to_owned(),
    })
}

/// A decimal or `0x` hexadecimal 32-bit mark other than zero (zero means "no mark").
pub(super) fn parse_mark(value: &str) -> Option<u32> {
    let mark = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => value.parse().ok()?,
    };
    (mark != 0).then_some(mark)
}

/// A `ZTUNNEL_WORKER_THREADS` value.
pub(super) enum ThreadSpec {
    AllCpus,
    Count(usize),
    /// A percentage of the CPUs in thousandths of a percent, in (0, 100 000].
    PercentMilli(u64),
}

pub(super) fn parse_thread_spec(value: &str) -> Option<ThreadSpec> {
    if let Some(percent) = value.strip_suffix('%') {
        let milli = parse_decimal_milli(percent)?;
        return (1..=100_000)
            .contains(&milli)
            .then_some(ThreadSpec::PercentMilli(milli));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match value.parse().ok()? {
        0 => Some(ThreadSpec::AllCpus),
        n => Some(ThreadSpec::Count(n)),
    }
}

/// A Kubernetes CPU quantity (`500m`, `1.5`, `2`) rounded up to whole CPUs; `None` for zero.
pub(super) fn parse_cpus(value: &str) -> Option<usize> {
    let milli = match value.strip_suffix('m') {
        Some(milli) if !milli.is_empty() && milli.bytes().all(|b| b.is_ascii_digit()) => {
            milli.parse().ok()?
        }
        Some(_) => return None,
        None => parse_decimal_milli(value)?,
    };
    let cpus = usize::try_from(milli.div_ceil(1000)).ok()?;
    (cpus > 0).then_some(cpus)
}

/// A non-negative decimal (`12`, `0.5`, `1.25`) in thousandths, rounding finer digits up.
pub(super) fn parse_decimal_milli(value: &str) -> Option<u64> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || value.ends_with('.') {
        return None;
    }
    let mut milli = whole.parse::<u64>().ok()?.checked_mul(1000)?;
    let (kept, dropped) = fraction.split_at(fraction.len().min(3));
    if !kept.is_empty() {
        let scale = 10u64.pow(3 - kept.len() as u32);
        milli = milli.checked_add(kept.parse::<u64>().ok()? * scale)?;
    }
    if dropped.bytes().any(|b| b != b'0') {
        milli = milli.checked_add(1)?;
    }
    Some(milli)
}
