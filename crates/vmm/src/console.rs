//! The serial console's host side: where guest output goes (terminal, file,
//! nowhere), raw mode on an interactive terminal (restored on every exit
//! path), and the Ctrl-A escape that lets the user quit.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::io::RawFd;

use crate::config::ConsoleConfig;
use crate::Error;

/// The escape key (Ctrl-A) and the key after it that quits.
pub const ESCAPE: u8 = 0x01;
pub const QUIT_KEY: u8 = b'x';

/// Writes guest output straight to a file descriptor (no buffering, so a
/// prompt without a newline shows at once).
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: writes from a valid buffer to a descriptor we own.
            let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer the serial device sends guest output to.
pub fn serial_output(cfg: &ConsoleConfig) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match cfg {
        ConsoleConfig::Stdio => Box::new(FdWriter(libc::STDOUT_FILENO)),
        ConsoleConfig::Off => Box::new(std::io::sink()),
        ConsoleConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::ConsoleFile {
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}

pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts the terminal on stdin in raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode if stdin is a terminal; None otherwise.
    pub fn enable() -> Option<RawTerminal> {
        if !stdin_is_tty() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so our own messages print normally.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: valid fd and pointer.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Interprets the Ctrl-A escape in keyboard input: Ctrl-A x quits, Ctrl-A
/// Ctrl-A sends one Ctrl-A, Ctrl-A followed by anything else sends both.
#[derive(Default)]
pub struct EscapeFilter {
    pending: bool,
}

impl EscapeFilter {
    /// Append the bytes for the guest to `out`; true if the user quit.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    QUIT_KEY => return true,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        assert!(!f.feed(b"ab\x01\x01c\x01", &mut out));
        assert_eq!(out, b"ab\x01c");
        // The escape may arrive split across reads.
        assert!(!f.feed(b"z", &mut out));
        assert_eq!(out, b"ab\x01c\x01z");
        assert!(f.feed(b"\x01x", &mut out));
    }

    #[test]
    fn console_file_errors_name_the_path() {
        let cfg = ConsoleConfig::File("/nonexistent-dir/console.log".into());
        let err = serial_output(&cfg).err().unwrap().to_string();
        assert!(err.contains("/nonexistent-dir/console.log"), "{err}");
    }
}
