//! The log: one line per event, in Firecracker's format
//! `TIMESTAMP [ID:THREAD(:LEVEL)(:FILE:LINE)] message`, written to a file
//! or FIFO when one is configured (`--log-path`, `PUT /logger`). Errors
//! and warnings also go to stderr as `vireo: ...` lines whether or not a
//! log is configured; the log adds the lifecycle and, at debug level, every
//! API request.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Levels, most severe first (Firecracker's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    /// Firecracker's level names, in any case (`Warning` or `Warn`).
    pub fn parse(s: &str) -> Result<Level, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Level::Off,
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => {
                return Err(format!(
                    "invalid log level {s:?}: use Error, Warning, Info, Debug, Trace or Off"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Level::Off => "OFF",
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

/// How the log is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    pub level: Level,
    pub show_level: bool,
    pub show_origin: bool,
    /// The instance id every line carries.
    pub id: String,
}

struct Sink {
    out: File,
    opts: LogOptions,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Write the log to `path` (appended; a FIFO works too) from now on.
pub fn configure(path: &Path, opts: LogOptions) -> std::io::Result<()> {
    let out = super::open_sink(path)?;
    *devices::bus::lock(&SINK) = Some(Sink { out, opts });
    Ok(())
}

/// One line, if a log is configured and `level` passes its filter.
pub fn log(level: Level, file: &str, line: u32, msg: std::fmt::Arguments<'_>) {
    let mut sink = devices::bus::lock(&SINK);
    let Some(s) = sink.as_mut() else {
        return;
    };
    if level == Level::Off || level > s.opts.level {
        return;
    }
    let thread = std::thread::current();
    let mut text = format!(
        "{} [{}:{}",
        super::time::now_rfc3339(),
        s.opts.id,
        thread.name().unwrap_or("?")
    );
    if s.opts.show_level {
        text.push(':');
        text.push_str(level.name());
    }
    if s.opts.show_origin {
        text.push_str(&format!(":{file}:{line}"));
    }
    text.push_str(&format!("] {msg}\n"));
    // A log that cannot be written (a FIFO whose reader left) must not stop
    // the VM.
    let _ = s.out.write_all(text.as_bytes());
}

/// `vlog!(Level::Info, "format", args...)`: log with this file and line.
#[macro_export]
macro_rules! vlog {
    ($level:expr, $($arg:tt)*) => {
        $crate::observe::logger::log($level, file!(), line!(), format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_filter_lines() {
        assert_eq!(Level::parse("Warning"), Ok(Level::Warn));
        assert_eq!(Level::parse("debug"), Ok(Level::Debug));
        assert!(Level::parse("loud").is_err());
        let path = std::env::temp_dir().join(format!("vireo-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        configure(
            &path,
            LogOptions {
                level: Level::Info,
                show_level: true,
                show_origin: true,
                id: "vm-7".into(),
            },
        )
        .unwrap();
        crate::vlog!(Level::Info, "started {}", 1);
        crate::vlog!(Level::Debug, "too detailed");
        crate::vlog!(Level::Error, "broken");
        *devices::bus::lock(&SINK) = None;
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains(":INFO:"), "{text}");
        assert!(lines[0].contains("[vm-7:"), "{text}");
        assert!(lines[0].contains("logger.rs:"), "{text}");
        assert!(lines[0].ends_with("] started 1"), "{text}");
        assert!(lines[1].ends_with("] broken"), "{text}");
    }
}
