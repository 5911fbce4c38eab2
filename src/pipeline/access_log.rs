//! The access log: one line per finished exchange, as JSON lines or in the combined log
//! format, written by a background thread to stdout, stderr or a file so that serving never
//! waits on I/O. Lines are formatted here directly (no tracing layer), which keeps the
//! per-request cost to one small buffer and one channel send.
//!
//! What goes into a line is collected by the pipeline ([`super::RequestCtx`]).

use std::fmt::Write as _;
use std::io::{BufWriter, Write as _};
use std::time::{Duration, SystemTime};

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

use crate::config::{AccessLogFormat, AccessLogTarget, LogConfig};

/// One line's fields, borrowed from the record.
pub struct Line<'a> {
    pub at: SystemTime,
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub cache: &'static str,
    pub tier: &'static str,
    pub site: &'a str,
    pub key: Option<String>,
    /// The variant key's first eight bytes in hex, when known.
    pub variant: Option<String>,
    pub ttl: Option<i64>,
    pub collapsed: bool,
    pub error: Option<&'static str>,
    pub complete: bool,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The SHA-256 fingerprint of the client certificate the TLS handshake verified.
    pub client_cert: Option<&'a str>,
}

/// The access-log writer.
pub struct AccessLog {
    format: AccessLogFormat,
    writer: NonBlocking,
    /// Flushes what is pending when the log is dropped.
    _guard: WorkerGuard,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessLog({:?})", self.format)
    }
}

impl AccessLog {
    /// Opens the destination named by `log.access_log_path` (`stdout`, `stderr`, or a file
    /// appended to). `None` when the access log is off.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn open(config: &LogConfig) -> std::io::Result<Option<AccessLog>> {
        if !config.access_log {
            return Ok(None);
        }
        // The background worker writes line by line and flushes after each batch it drains:
        // a buffer underneath turns a burst of lines into one write.
        const BUFFER: usize = 64 * 1024;
        // Lines waiting for the writer; past it, lines are dropped rather than make requests
        // wait. The queue is allocated and touched in full at start (32 bytes a line):
        // tracing-appender's default of 128k lines was 4 MiB resident. 32k lines are a
        // third of a second of a busy node's requests.
        const PENDING_LINES: usize = 32 * 1024;
        fn background<W: std::io::Write + Send + 'static>(target: W) -> (NonBlocking, WorkerGuard) {
            tracing_appender::non_blocking::NonBlockingBuilder::default()
                .buffered_lines_limit(PENDING_LINES)
                .finish(target)
        }
        let (writer, guard) = match &config.access_log_path {
            AccessLogTarget::Stdout => {
                background(BufWriter::with_capacity(BUFFER, std::io::stdout()))
            }
            AccessLogTarget::Stderr => {
                background(BufWriter::with_capacity(BUFFER, std::io::stderr()))
            }
            AccessLogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                background(BufWriter::with_capacity(BUFFER, file))
            }
        };
        Ok(Some(AccessLog {
            format: config.access_log_format,
            writer,
            _guard: guard,
        }))
    }

    /// Whether lines carry Referer and User-Agent (the combined format does).
    pub fn wants_agent_fields(&self) -> bool {
        self.format == AccessLogFormat::Combined
    }

    /// Formats and queues one line. Never blocks: under extreme backlog lines are dropped.
    pub fn write(&self, line: &Line<'_>) {
        let text = match self.format {
            AccessLogFormat::Json => json_line(line),
            AccessLogFormat::Combined => combined_line(line),
        };
        let mut writer = self.writer.clone();
        let _ = writer.write_all(text.as_bytes());
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn json_line(line: &Line<'_>) -> String {
    // Written by hand: building a serde_json map costs a dozen allocations per line.
    let mut text = String::with_capacity(320);
    let _ = write!(
        text,
        "{{\"time\":\"{}\",\"client\":\"{}\"",
        httpdate::fmt_http_date(line.at),
        line.client
    );
    for (name, value) in [
        ("method", line.method),
        ("host", line.host),
        ("target", line.target),
        ("version", line.version),
    ] {
        let _ = write!(text, ",\"{name}\":");
        json_string(&mut text, value);
    }
    let _ = write!(
        text,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{},\"cache\":\"{}\",\"tier\":\"{}\",\"site\":",
        line.status,
        line.bytes,
        millis(line.duration),
        line.cache,
        line.tier
    );
    json_string(&mut text, line.site);
    if let Some(upstream) = line.upstream {
        let _ = write!(text, ",\"upstream_ms\":{}", millis(upstream));
    }
    if let Some(key) = &line.key {
        let _ = write!(text, ",\"key\":\"{key}\"");
    }
    if let Some(variant) = &line.variant {
        let _ = write!(text, ",\"variant\":\"{variant}\"");
    }
    if let Some(ttl) = line.ttl {
        let _ = write!(text, ",\"ttl\":{ttl}");
    }
    if let Some(error) = line.error {
        let _ = write!(text, ",\"error\":\"{error}\"");
    }
    if let Some(fingerprint) = line.client_cert {
        let _ = write!(text, ",\"client_cert\":\"{fingerprint}\"");
    }
    let _ = writeln!(
        text,
        ",\"collapsed\":{},\"complete\":{}}}",
        line.collapsed, line.complete
    );
    text
}

/// Appends `value` as a JSON string (RFC 8259 §7 escapes).
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Apache/nginx combined format, then `cache=`, `tier=` and timings as extra fields:
/// `client - - [10/Oct/2026:13:55:36 +0000] "GET /p HTTP/1.1" 200 512 "referer" "agent" cache=hit ...`
fn combined_line(line: &Line<'_>) -> String {
    let quoted = |value: Option<&str>| {
        value
            .unwrap_or("-")
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    let mut text = String::with_capacity(256);
    let _ = write!(
        text,
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" cache={} tier={} duration_ms={}",
        line.client,
        clf_time(line.at),
        line.method,
        line.target.replace('"', "%22"),
        line.version,
        line.status,
        line.bytes,
        quoted(line.referer),
        quoted(line.user_agent),
        line.cache,
        line.tier,
        millis(line.duration),
    );
    if let Some(upstream) = line.upstream {
        let _ = write!(text, " upstream_ms={}", millis(upstream));
    }
    if let Some(ttl) = line.ttl {
        let _ = write!(text, " ttl={ttl}");
    }
    if line.collapsed {
        text.push_str(" collapsed");
    }
    if let Some(error) = line.error {
        let _ = write!(text, " error={error}");
    }
    if let Some(fingerprint) = line.client_cert {
        let _ = write!(text, " client_cert={fingerprint}");
    }
    text.push('\n');
    text
}

/// `10/Oct/2026:13:55:36 +0000` (UTC), the common log format's time.
fn clf_time(at: SystemTime) -> String {
    const CLF: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from(at)
        .format(CLF)
        .unwrap_or_else(|_| "01/Jan/1970:00:00:00 +0000".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_escape_what_they_must() {
        let line = Line {
            at: SystemTime::UNIX_EPOCH,
            client: "127.0.0.1".parse().unwrap(),
            method: "GET",
            host: "h",
            target: "/a\"b\\c\n",
            version: "HTTP/1.1",
            status: 200,
            bytes: 5,
            duration: Duration::from_micros(1500),
            upstream: None,
            cache: "hit",
            tier: "memory",
            site: "default",
            key: None,
            variant: None,
            ttl: Some(-3),
            collapsed: true,
            error: None,
            complete: true,
            referer: None,
            user_agent: None,
            client_cert: Some("ab01"),
        };
        let text = json_line(&line);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["target"], "/a\"b\\c\n");
        assert_eq!(parsed["duration_ms"], 1.5);
        assert_eq!(
            (parsed["ttl"].as_i64(), parsed["collapsed"].as_bool()),
            (Some(-3), Some(true))
        );
        assert_eq!(parsed["client_cert"], "ab01");
        assert!(text.ends_with("}\n"));
        assert!(combined_line(&line).ends_with(" client_cert=ab01\n"));
    }

    #[test]
    fn clf_time_matches_the_calendar() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_752_936); // 2026-11-27 04:15:36 UTC
        assert_eq!(clf_time(at), "27/Nov/2026:04:15:36 +0000");
        assert_eq!(
            clf_time(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(clf_time(leap), "29/Feb/2000:00:00:00 +0000");
    }
}
