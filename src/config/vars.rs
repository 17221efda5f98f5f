//! Typed reads of named variables: a value in one of its accepted forms (`syntax.rs`) or a
//! [`ConfigError`] naming the variable, the value and the forms. Empty means unset.

use std::time::Duration;

use super::env::Source;
use super::syntax::{parse_bool, parse_duration};
use super::ConfigError;

/// The forms the error of a variable lists.
pub(super) const BOOL_FORMS: &str = "true | false | 1 | 0";
pub(super) const DURATION_FORMS: &str = "a duration such as 500ms, 5s, 10m, 24h or 1h30m";
pub(super) const NONZERO_DURATION_FORMS: &str =
    "a non-zero duration such as 500ms, 5s, 10m, 24h or 1h30m";
pub(super) const SECONDS_DURATION_FORMS: &str = "a duration of at least 1s such as 30s, 3m or 1h";
pub(super) const CPU_FORMS: &str = "a positive CPU quantity such as 500m, 1.5 or 2";
pub(super) const ADDRESS_FORMS: &str = "[http:// | https://]host:port, or empty to disable";
pub(super) const DISCOVERY_ADDRESS_FORMS: &str = "[http:// | https://]host:port";
pub(super) const DNS_ADDR_FORMS: &str = "localhost:<port> or ip:port";
pub(super) const WINDOW_FORMS: &str = "a window size in bytes from 1 to 2147483647";

/// Typed reads over a [`Source`]. Every read treats an empty value as unset.
pub(super) struct Vars<'a>(pub(super) &'a dyn Source);

impl Vars<'_> {
    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.0.var(name).filter(|value| !value.is_empty())
    }

    pub(super) fn parse<T>(
        &self,
        name: &'static str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(name) {
            None => Ok(None),
            Some(value) => match parse(&value) {
                Some(parsed) => Ok(Some(parsed)),
                None => Err(ConfigError::Invalid {
                    var: name.to_owned(),
                    value,
                    expected,
                }),
            },
        }
    }

    pub(super) fn bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.parse(name, BOOL_FORMS, parse_bool)?.unwrap_or(default))
    }

    /// A duration no shorter than `min`.
    pub(super) fn duration(
        &self,
        name: &'static str,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let expected = match min {
            Duration::ZERO => DURATION_FORMS,
            min if min >= Duration::from_secs(1) => SECONDS_DURATION_FORMS,
            _ => NONZERO_DURATION_FORMS,
        };
        Ok(self
            .parse(name, expected, |v| parse_duration(v).filter(|d| *d >= min))?
            .unwrap_or(default))
    }

    /// An `http(s)` URI: unset gives `default`, empty disables (`None`), no scheme gets
    /// `https://`.
    pub(super) fn control_plane_address(
        &self,
        name: &'static str,
        default: &str,
    ) -> Result<Option<String>, ConfigError> {
        let value = match self.0.var(name) {
            None => return Ok(Some(default.to_owned())),
            Some(value) if value.is_empty() => return Ok(None),
            Some(value) => value,
        };
        match control_plane_uri(&value) {
            Some(uri) => Ok(Some(uri)),
            None => Err(ConfigError::Invalid {
                var: name.to_owned(),
                value,
                expected: ADDRESS_FORMS,
            }),
        }
    }
}

/// `value` as an `http(s)://host[:port]` URI, `https://` added when it has no scheme.
pub(super) fn control_plane_uri(value: &str) -> Option<String> {
    let uri = match value.contains("://") {
        true => value.to_owned(),
        false => format!("https://{value}"),
    };
    let valid = uri.parse::<http::Uri>().is_ok_and(|parsed| {
        matches!(parsed.scheme_str(), Some("http" | "https"))
            && parsed
                .authority()
                .is_some_and(|authority| !authority.host().is_empty())
    });
    valid.then_some(uri)
}
