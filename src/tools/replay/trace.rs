//! Request traces: reading libCacheSim's `oracleGeneral` binary (plain or zstd), its CSV
//! (`time,obj_id,size`), plain CSV and text, and web server access logs (common/combined
//! log format); writing `oracleGeneral`; and generating synthetic Zipf or uniform workloads.
//!
//! Every format becomes a `Vec<TraceRequest>`: 16 bytes per request, read once, replayed
//! many times.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRequest {
    /// Seconds (relative or absolute: only differences matter).
    pub time: u32,
    pub id: u64,
    pub size: u32,
    /// How long a stored copy stays fresh, in seconds: [`FOREVER`] when the trace says
    /// nothing, 0 for a response that may not be stored.
    pub ttl: u32,
}

/// The `ttl` of a request whose trace gives no freshness: stored copies never expire.
pub const FOREVER: u32 = u32::MAX;

/// Trace file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// libCacheSim oracleGeneral: 24-byte little-endian records (u32 time, u64 id, u32
    /// size, i64 next access), optionally zstd-compressed.
    Oracle,
    /// CSV with a header naming the columns (`time,obj_id,size`), or none (then three
    /// columns are time, id, size; two are id, size; one is id).
    Csv,
    /// Common or combined log format; the size column gives the object size.
    Clf,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Shown as `path: cause` (the cause is not a `source`, or chains would say it twice).
    #[error("{path}: {cause}")]
    Io { path: String, cause: io::Error },
    #[error("{path} line {line}: {problem}")]
    Malformed {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("synthetic workload `{0}`: {1}")]
    Synthetic(String, String),
}

const ORACLE_RECORD: usize = 24;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Guesses the format from the file name.
pub fn guess_format(path: &Path) -> TraceFormat {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.contains("oracle") || name.ends_with(".bin") || name.ends_with(".zst") {
        TraceFormat::Oracle
    } else if name.ends_with(".log") || name.contains("access") {
        TraceFormat::Clf
    } else {
        TraceFormat::Csv
    }
}

/// Reads a whole trace.
///
/// # Errors
/// An unreadable file, or a line or record that is not of the format (named by line).
pub fn read(path: &Path, format: TraceFormat) -> Result<Vec<TraceRequest>, TraceError> {
    let name = path.display().to_string();
    let io_err = |cause| TraceError::Io {
        path: name.clone(),
        cause,
    };
    let mut file = BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(io_err)?);
    match format {
        TraceFormat::Oracle => {
            let head = file.fill_buf().map_err(io_err)?;
            let reader: Box<dyn Read> = if head.starts_with(&ZSTD_MAGIC) {
                Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io_err)?)
            } else {
                Box::new(file)
            };
            read_oracle(reader, &name)
        }
        TraceFormat::Csv => read_csv(file, &name),
        TraceFormat::Clf => read_clf(file, &name),
    }
}

fn read_oracle(mut reader: impl Read, name: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let mut out = Vec::new();
    let mut buffer = vec![0u8; ORACLE_RECORD * 8192];
    let mut filled = 0;
    loop {
        let read = reader
            .read(&mut buffer[filled..])
            .map_err(|cause| TraceError::Io {
                path: name.to_string(),
                cause,
            })?;
        filled += read;
        let whole = filled / ORACLE_RECORD * ORACLE_RECORD;
        for record in buffer[..whole].chunks_exact(ORACLE_RECORD) {
            out.push(TraceRequest {
                time: u32::from_le_bytes(record[0..4].try_into().unwrap_or_default()),
                id: u64::from_le_bytes(record[4..12].try_into().unwrap_or_default()),
                size: u32::from_le_bytes(record[12..16].try_into().unwrap_or_default()),
                ttl: FOREVER,
            });
        }
        buffer.copy_within(whole..filled, 0);
        filled -= whole;
        if read == 0 {
            if filled != 0 {
                return Err(TraceError::Malformed {
                    path: name.to_string(),
                    line: out.len() + 1,
                    problem: format!("trailing {filled} bytes: not 24-byte oracleGeneral records"),
                });
            }
            return Ok(out);
        }
    }
}

/// FNV-1a, for string object ids.
fn hash_id(text: &[u8]) -> u64 {
    text.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn parse_u64(field: &[u8]) -> Option<u64> {
    let field = field.trim_ascii();
    if field.is_empty() || field.len() > 19 {
        return None;
    }
    field.iter().try_fold(0u64, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Column positions of time, id, size and ttl in a CSV trace (None: absent).
type CsvColumns = (Option<usize>, usize, Option<usize>, Option<usize>);

fn read_csv(mut reader: impl BufRead, name: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let mut out = Vec::new();
    let mut line = Vec::with_capacity(128);
    let mut columns: Option<CsvColumns> = None;
    let mut number = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|cause| TraceError::Io {
                path: name.to_string(),
                cause,
            })?;
        if read == 0 {
            return Ok(out);
        }
        number += 1;
        let text = line.trim_ascii();
        if text.is_empty() || text.starts_with(b"#") {
            continue;
        }
        let fields: Vec<&[u8]> = text.split(|b| *b == b',').collect();
        let malformed = |problem: &str| TraceError::Malformed {
            path: name.to_string(),
            line: number,
            problem: problem.to_string(),
        };
        let found = match columns {
            Some(found) => found,
            None => {
                let (found, is_header) = csv_columns(&fields, number == 1, &malformed)?;
                columns = Some(found);
                if is_header {
                    continue;
                }
                found
            }
        };
        out.push(csv_request(&fields, found, &malformed)?);
    }
}

/// The columns of a CSV trace, from its header line or (without one) its field count;
/// returns whether `fields` was the header.
fn csv_columns(
    fields: &[&[u8]],
    is_first_line: bool,
    malformed: &dyn Fn(&str) -> TraceError,
) -> Result<(CsvColumns, bool), TraceError> {
    let is_header = is_first_line
        && fields.iter().all(|f| parse_u64(f).is_none())
        && fields.iter().any(|f| f.iter().any(u8::is_ascii_alphabetic));
    if !is_header {
        let found = match fields.len() {
            1 => (None, 0, None, None),
            2 => (None, 0, Some(1), None),
            3 => (Some(0), 1, Some(2), None),
            _ => (Some(0), 1, Some(2), Some(3)),
        };
        return Ok((found, false));
    }
    let find = |names: &[&str]| {
        fields.iter().position(|f| {
            let f = String::from_utf8_lossy(f.trim_ascii()).to_ascii_lowercase();
            names.contains(&f.as_str())
        })
    };
    let id = find(&["obj_id", "id", "key", "object", "object_id"])
        .ok_or_else(|| malformed("header has no obj_id column"))?;
    let found = (
        find(&["time", "timestamp", "clock_time", "ts"]),
        id,
        find(&["size", "obj_size", "bytes"]),
        find(&["ttl", "ttl_s"]),
    );
    Ok((found, true))
}

/// One CSV line as a request.
fn csv_request(
    fields: &[&[u8]],
    (time_col, id_col, size_col, ttl_col): CsvColumns,
    malformed: &dyn Fn(&str) -> TraceError,
) -> Result<TraceRequest, TraceError> {
    let id_field = fields
        .get(id_col)
        .ok_or_else(|| malformed("missing obj_id"))?;
    let id = parse_u64(id_field).unwrap_or_else(|| hash_id(id_field.trim_ascii()));
    let size = match size_col {
        Some(col) => fields
            .get(col)
            .and_then(|f| parse_u64(f))
            .ok_or_else(|| malformed("size is not a number"))?,
        None => 1,
    };
    let time = time_col
        .and_then(|col| fields.get(col))
        .and_then(|f| parse_u64(f))
        .unwrap_or(0);
    // A ttl column: seconds of freshness, 0 for uncacheable; empty or negative (-1, as
    // libCacheSim writes "none") means no expiry.
    let ttl = match ttl_col
        .and_then(|col| fields.get(col))
        .map(|f| f.trim_ascii())
    {
        None | Some(b"") => FOREVER,
        Some(field) if field.starts_with(b"-") => FOREVER,
        Some(field) => parse_u64(field)
            .map(|ttl| u32::try_from(ttl).unwrap_or(FOREVER - 1))
            .ok_or_else(|| malformed("ttl is not a number"))?,
    };
    Ok(TraceRequest {
        time: u32::try_from(time).unwrap_or(u32::MAX),
        id,
        size: u32::try_from(size).unwrap_or(u32::MAX),
        ttl,
    })
}

/// Seconds since the epoch of a CLF time (`10/Oct/2000:13:55:36 -0700`).
fn clf_time(text: &str) -> Option<u64> {
    let (date, zone) = text.split_once(' ').unwrap_or((text, "+0000"));
    let mut parts = date.splitn(4, ['/', ':']);
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = parts.next()?.parse().ok()?;
    let clock: Vec<u64> = parts
        .next()?
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hour, minute, second) = (*clock.first()?, *clock.get(1)?, *clock.get(2)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let local = days * 86_400 + hour * 3600 + minute * 60 + second;
    let sign = if zone.starts_with('-') { -1i64 } else { 1 };
    let zone: i64 = zone.trim_start_matches(['+', '-']).parse().unwrap_or(0);
    let offset = sign * ((zone / 100) * 3600 + (zone % 100) * 60);
    u64::try_from(local as i64 - offset).ok()
}

fn read_clf(reader: impl BufRead, name: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let mut out = Vec::new();
    // A 304 or HEAD carries no body: the object keeps the largest size seen for it.
    let mut sizes: HashMap<u64, u32> = HashMap::new();
    let mut first_time = None;
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|cause| TraceError::Io {
            path: name.to_string(),
            cause,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |problem: &str| TraceError::Malformed {
            path: name.to_string(),
            line: index + 1,
            problem: problem.to_string(),
        };
        let time_text = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(time, _)| time)
            .ok_or_else(|| malformed("no [time]"))?;
        let mut quoted = line.splitn(3, '"');
        quoted.next();
        let request = quoted.next().ok_or_else(|| malformed("no \"request\""))?;
        let after = quoted
            .next()
            .ok_or_else(|| malformed("unterminated request"))?;
        let mut request_parts = request.split_ascii_whitespace();
        let method = request_parts.next().unwrap_or("");
        let target = request_parts.next().ok_or_else(|| malformed("no target"))?;
        let mut after = after.split_ascii_whitespace();
        let status: u16 = after
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("no status"))?;
        let bytes = after.next().ok_or_else(|| malformed("no size"))?;
        let bytes = if bytes == "-" {
            0
        } else {
            bytes
                .parse::<u64>()
                .map_err(|_| malformed("size is not a number"))?
        };
        if !matches!(method, "GET" | "HEAD") || !(200..400).contains(&status) {
            continue;
        }
        let id = hash_id(target.as_bytes());
        let known = sizes.entry(id).or_insert(0);
        *known = (*known).max(u32::try_from(bytes).unwrap_or(u32::MAX));
        let time = clf_time(time_text).ok_or_else(|| malformed("unreadable time"))?;
        let start = *first_time.get_or_insert(time);
        out.push(TraceRequest {
            time: u32::try_from(time.saturating_sub(start)).unwrap_or(u32::MAX),
            id,
            size: (*known).max(1),
            ttl: FOREVER,
        });
    }
    // Requests seen before the object's first full response take its full size.
    for request in &mut out {
        if let Some(size) = sizes.get(&request.id) {
            request.size = (*size).max(1);
        }
    }
    Ok(out)
}

/// Writes `requests` as oracleGeneral (uncompressed, or zstd when `compress`). The next
/// access of each request is its index in the trace, -1 when the object is not requested
/// again.
///
/// # Errors
/// Write failures.
pub fn write_oracle(out: impl Write, requests: &[TraceRequest], compress: bool) -> io::Result<()> {
    let mut next = vec![-1i64; requests.len()];
    let mut last_seen: HashMap<u64, usize> = HashMap::with_capacity(requests.len() / 4);
    for (index, request) in requests.iter().enumerate().rev() {
        if let Some(later) = last_seen.insert(request.id, index) {
            next[index] = later as i64;
        }
    }
    let mut writer: Box<dyn Write> = if compress {
        Box::new(zstd::stream::write::Encoder::new(out, 3)?.auto_finish())
    } else {
        Box::new(io::BufWriter::with_capacity(1 << 20, out))
    };
    for (request, next) in requests.iter().zip(next) {
        let mut record = [0u8; ORACLE_RECORD];
        record[0..4].copy_from_slice(&request.time.to_le_bytes());
        record[4..12].copy_from_slice(&request.id.to_le_bytes());
        record[12..16].copy_from_slice(&request.size.to_le_bytes());
        record[16..24].copy_from_slice(&next.to_le_bytes());
        writer.write_all(&record)?;
    }
    writer.flush()
}

/// Writes `requests` as CSV with the header `time,obj_id,size` (and `ttl` when any request
/// has one; -1 for none).
///
/// # Errors
/// Write failures.
pub fn write_csv(out: impl Write, requests: &[TraceRequest]) -> io::Result<()> {
    let mut writer = io::BufWriter::with_capacity(1 << 20, out);
    let with_ttl = requests.iter().any(|r| r.ttl != FOREVER);
    writeln!(
        writer,
        "time,obj_id,size{}",
        if with_ttl { ",ttl" } else { "" }
    )?;
    for request in requests {
        write!(writer, "{},{},{}", request.time, request.id, request.size)?;
        match (with_ttl, request.ttl) {
            (false, _) => writeln!(writer)?,
            (true, FOREVER) => writeln!(writer, ",-1")?,
            (true, ttl) => writeln!(writer, ",{ttl}")?,
        }
    }
    writer.flush()
}

/// splitmix64: a small, fast, seedable generator; the same seed gives the same workload
/// on every machine.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A Zipf sampler over ranks 0..n by inverse CDF (binary search in the cumulative table).
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(objects: usize, alpha: f64) -> Zipf {
        let mut total = 0.0;
        let mut cumulative = Vec::with_capacity(objects);
        for rank in 1..=objects {
            total += 1.0 / (rank as f64).powf(alpha);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        Zipf { cumulative }
    }

    pub fn sample(&self, random: &mut SplitMix) -> usize {
        let u = random.next_f64();
        self.cumulative
            .partition_point(|c| *c < u)
            .min(self.cumulative.len().saturating_sub(1))
    }
}

/// A synthetic workload spec: `zipf:alpha=0.9,objects=1e6,requests=1e7,seed=1,size=4096`
/// or `uniform:objects=...`. `size` is fixed, `size=MIN-MAX` (uniform per object) or
/// `size=logn:MEDIAN:SIGMA` (lognormal per object, as web object sizes are, 1 B to 64 MiB);
/// `ttl=SECONDS` gives every response that freshness (time advances 1 s per 1000
/// requests). Defaults: 100k objects, 1M requests, seed 1, 4096 bytes, no expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct Synthetic {
    pub zipf_alpha: Option<f64>,
    pub objects: usize,
    pub requests: usize,
    pub seed: u64,
    pub size: ObjectSizes,
    pub ttl: u32,
}

/// How a synthetic workload's object sizes are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObjectSizes {
    /// Uniform in `[low, high]` (one value when equal).
    Uniform(u32, u32),
    /// Lognormal with this median and sigma (of the size's natural logarithm).
    LogNormal { median: f64, sigma: f64 },
}

/// The largest object a lognormal draw gives.
const MAX_SYNTHETIC_SIZE: f64 = (64 << 20) as f64;

impl ObjectSizes {
    fn draw(self, random: &mut SplitMix) -> u32 {
        match self {
            ObjectSizes::Uniform(low, high) if low == high => low,
            ObjectSizes::Uniform(low, high) => {
                low + (random.next_u64() % u64::from(high - low + 1)) as u32
            }
            ObjectSizes::LogNormal { median, sigma } => {
                // Box-Muller: one standard normal from two uniforms.
                let u1 = random.next_f64().max(f64::MIN_POSITIVE);
                let u2 = random.next_f64();
                let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let size = median * (sigma * normal).exp();
                size.clamp(1.0, MAX_SYNTHETIC_SIZE) as u32
            }
        }
    }
}

fn parse_count(text: &str) -> Option<usize> {
    text.parse::<usize>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(|v| v as usize)
    })
}

impl std::str::FromStr for Synthetic {
    type Err = TraceError;

    fn from_str(spec: &str) -> Result<Synthetic, TraceError> {
        let bad = |why: &str| TraceError::Synthetic(spec.to_string(), why.to_string());
        let (kind, params) = spec.split_once(':').unwrap_or((spec, ""));
        let mut synthetic = Synthetic {
            zipf_alpha: match kind {
                "zipf" => Some(1.0),
                "uniform" => None,
                _ => return Err(bad("kind must be zipf or uniform")),
            },
            objects: 100_000,
            requests: 1_000_000,
            seed: 1,
            size: ObjectSizes::Uniform(4096, 4096),
            ttl: FOREVER,
        };
        for param in params.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = param
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            match key {
                "alpha" if synthetic.zipf_alpha.is_some() => {
                    synthetic.zipf_alpha =
                        Some(value.parse().map_err(|_| bad("alpha is not a number"))?);
                }
                "objects" => {
                    synthetic.objects = parse_count(value).ok_or_else(|| bad("bad objects"))?;
                }
                "requests" => {
                    synthetic.requests = parse_count(value).ok_or_else(|| bad("bad requests"))?;
                }
                "seed" => synthetic.seed = value.parse().map_err(|_| bad("bad seed"))?,
                "ttl" => synthetic.ttl = value.parse().map_err(|_| bad("bad ttl"))?,
                "size" if value.starts_with("logn:") => {
                    let mut parts = value["logn:".len()..].split(':');
                    let median = parts.next().and_then(|m| m.parse::<f64>().ok());
                    let sigma = parts.next().and_then(|s| s.parse::<f64>().ok());
                    match (median, sigma, parts.next()) {
                        (Some(median), Some(sigma), None)
                            if median >= 1.0 && (0.0..=10.0).contains(&sigma) =>
                        {
                            synthetic.size = ObjectSizes::LogNormal { median, sigma };
                        }
                        _ => {
                            return Err(bad("size=logn:MEDIAN:SIGMA needs MEDIAN >= 1, SIGMA 0-10"))
                        }
                    }
                }
                "size" => {
                    let (low, high) = value.split_once('-').unwrap_or((value, value));
                    let low = parse_count(low).ok_or_else(|| bad("bad size"))?;
                    let high = parse_count(high).ok_or_else(|| bad("bad size"))?;
                    if low == 0 || high < low {
                        return Err(bad("size must be N or MIN-MAX with 0 < MIN <= MAX"));
                    }
                    synthetic.size = ObjectSizes::Uniform(
                        u32::try_from(low).map_err(|_| bad("size too large"))?,
                        u32::try_from(high).map_err(|_| bad("size too large"))?,
                    );
                }
                _ => return Err(bad(&format!("unknown parameter `{key}`"))),
            }
        }
        if synthetic.objects == 0 {
            return Err(bad("objects must be at least 1"));
        }
        Ok(synthetic)
    }
}

impl Synthetic {
    /// The workload; the same spec gives the same requests.
    pub fn generate(&self) -> Vec<TraceRequest> {
        let mut random = SplitMix::new(self.seed);
        let sizes: Vec<u32> = (0..self.objects)
            .map(|_| self.size.draw(&mut random))
            .collect();
        let zipf = self.zipf_alpha.map(|alpha| Zipf::new(self.objects, alpha));
        (0..self.requests)
            .map(|index| {
                let rank = match &zipf {
                    Some(zipf) => zipf.sample(&mut random),
                    None => (random.next_u64() % self.objects as u64) as usize,
                };
                TraceRequest {
                    time: (index / 1000) as u32,
                    id: rank as u64 + 1,
                    size: sizes[rank],
                    ttl: self.ttl,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header_without_header_and_string_ids() {
        let with = read_csv(&b"time,obj_id,size\n1,10,100\n2,11,200\n"[..], "t").unwrap();
        assert_eq!(
            with[1],
            TraceRequest {
                time: 2,
                id: 11,
                size: 200,
                ttl: FOREVER,
            }
        );
        let reordered = read_csv(&b"size,obj_id\n100,10\n"[..], "t").unwrap();
        assert_eq!(
            reordered[0],
            TraceRequest {
                time: 0,
                id: 10,
                size: 100,
                ttl: FOREVER,
            }
        );
        let plain = read_csv(&b"10,100\n11,200\n"[..], "t").unwrap();
        assert_eq!(
            plain[0],
            TraceRequest {
                time: 0,
                id: 10,
                size: 100,
                ttl: FOREVER,
            }
        );
        let strings = read_csv(&b"/a.css,10\n/a.css,10\n"[..], "t").unwrap();
        assert_eq!(strings[0].id, strings[1].id);
        assert!(read_csv(&b"time,obj_id,size\n1,2,x\n"[..], "t").is_err());
        let ttls = read_csv(
            &b"time,obj_id,size,ttl\n1,10,100,60\n2,11,5,0\n3,12,5,-1\n"[..],
            "t",
        )
        .unwrap();
        assert_eq!(
            ttls.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            [60, 0, FOREVER]
        );
        let mut written = Vec::new();
        write_csv(&mut written, &ttls).unwrap();
        assert_eq!(read_csv(&written[..], "t").unwrap(), ttls);
    }

    #[test]
    fn clf_lines_give_paths_sizes_and_times() {
        let log = concat!(
            "127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] \"GET /a.gif HTTP/1.0\" 200 2326\n",
            "127.0.0.1 - - [10/Oct/2000:13:55:38 -0700] \"GET /a.gif HTTP/1.0\" 304 -\n",
            "127.0.0.1 - - [10/Oct/2000:13:55:39 -0700] \"POST /form HTTP/1.0\" 200 5 \"-\" \"ua\"\n",
        );
        let requests = read_clf(log.as_bytes(), "t").unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].size, 2326, "a 304 keeps the object's size");
        assert_eq!(requests[1].time, 2);
        assert_eq!(clf_time("10/Oct/2000:13:55:36 -0700"), Some(971_211_336));
    }

    #[test]
    fn oracle_round_trips_plain_and_zstd() {
        let requests =
            Synthetic::from_str("zipf:alpha=0.8,objects=50,requests=500,seed=3,size=10-99")
                .unwrap()
                .generate();
        for compress in [false, true] {
            let mut bytes = Vec::new();
            write_oracle(&mut bytes, &requests, compress).unwrap();
            let reader: Box<dyn Read> = if bytes.starts_with(&ZSTD_MAGIC) {
                Box::new(zstd::stream::read::Decoder::new(&bytes[..]).unwrap())
            } else {
                Box::new(&bytes[..])
            };
            assert_eq!(read_oracle(reader, "t").unwrap(), requests);
        }
        assert!(read_oracle(&[0u8; 30][..], "t").is_err());
    }

    use std::str::FromStr;

    #[test]
    fn synthetic_is_deterministic_for_a_seed() {
        let spec = Synthetic::from_str("zipf:alpha=0.9,objects=1e3,requests=1e4,seed=7").unwrap();
        assert_eq!(spec.objects, 1000);
        assert_eq!(spec.generate(), spec.generate());
        let other = Synthetic::from_str("zipf:alpha=0.9,objects=1e3,requests=1e4,seed=8").unwrap();
        assert_ne!(spec.generate(), other.generate());
        assert!(Synthetic::from_str("pareto:objects=1").is_err());
        assert!(Synthetic::from_str("zipf:colour=red").is_err());
    }
}
