//! `PUT /logger` and `PUT /metrics`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::{FieldError, Validate};

/// A log level. Parsing ignores case (`"debug"`, `"DEBUG"`, `"Debug"`) and
/// takes `"warn"` for `Warning`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum LogLevel {
    Error,
    Warning,
    #[default]
    Info,
    Debug,
    Trace,
    Off,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<LogLevel, D::Error> {
        let s = String::deserialize(de)?;
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            "off" => Ok(LogLevel::Off),
            _ => Err(serde::de::Error::unknown_variant(
                &s,
                &["Error", "Warning", "Info", "Debug", "Trace", "Off"],
            )),
        }
    }
}

/// Where and how the human-readable log is written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default)]
    pub level: LogLevel,
    #[serde(default)]
    pub show_level: bool,
    #[serde(default)]
    pub show_log_origin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Validate for Logger {
    fn validate(&self) -> Result<(), FieldError> {
        if self.log_path.as_deref() == Some("") {
            return Err(FieldError::new("log_path", "must not be empty"));
        }
        Ok(())
    }
}

/// Where the JSON metrics are flushed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub metrics_path: String,
    #[serde(default)]
    pub emit_id: bool,
    /// Operator-defined pairs added to every metrics line.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl Validate for Metrics {
    fn validate(&self) -> Result<(), FieldError> {
        if self.metrics_path.is_empty() {
            return Err(FieldError::new("metrics_path", "must not be empty"));
        }
        Ok(())
    }
}
