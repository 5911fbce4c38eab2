//! Disk tier figures for issue notes: start-up time with many stored objects, the sweep's
//! cost, and bytes on disk per object beyond its body.
//!
//!     cargo bench --bench disk            # 100k objects of 1 KiB
//!     OBJECTS=20000 cargo bench --bench disk
//!     INLINE_MAX=0 cargo bench --bench disk   # every body in a file of its own
//!     NOTES=63000 cargo bench --bench disk    # digest records, as many as Debian's main index
//!
//! Time to first request is measured on the real binary: it is started on the filled
//! directory (origin unreachable) and asked for a stored object until it answers 200.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use outpost::cache::disk::index::{DiskIndex, SledIndex};
use outpost::cache::disk::{DiskStore, NewBody};
use outpost::cache::entry::{EntryMeta, StoredResponse};
use outpost::cache::key::{PrimaryKey, VariantKey, Vary};
use outpost::cache::policy::{Freshness, PolicySettings};

const BODY: usize = 1024;

fn entry(index: usize) -> StoredResponse {
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", "max-age=86400".parse().unwrap());
    headers.insert("content-type", "application/octet-stream".parse().unwrap());
    headers.insert("etag", format!("\"{index:x}\"").parse().unwrap());
    headers.insert("content-length", BODY.into());
    let now = SystemTime::now();
    // The validator and the date a static-file origin sends with every response
    // (RFC 9110 §6.6.1: an origin with a clock sends Date).
    headers.insert(
        "last-modified",
        httpdate::fmt_http_date(now - Duration::from_secs(86_400))
            .parse()
            .unwrap(),
    );
    headers.insert("date", httpdate::fmt_http_date(now).parse().unwrap());
    let freshness = Freshness::compute(
        StatusCode::OK,
        &headers,
        &PolicySettings::default(),
        now,
        now,
    );
    let path = format!("/obj/{index}");
    let meta = EntryMeta::new(
        PrimaryKey::new("http", "bench.test", &path),
        format!("http://bench.test{path}"),
        (StatusCode::OK, http::Version::HTTP_11),
        headers,
        (Vary::None, VariantKey::NONE),
        freshness,
    );
    let mut body = vec![0u8; BODY];
    body[..8].copy_from_slice(&(index as u64).to_le_bytes());
    StoredResponse::new(meta, Bytes::from(body))
}

/// File sizes under `path`, and the blocks the file system allocated for them.
fn dir_bytes(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        let (len, allocated) = if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            (meta.len(), meta.blocks() * 512)
        };
        total.0 += len;
        total.1 += allocated;
    }
    total
}

fn first_hit(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /obj/12345 HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// The mirror's digest records for `count` packages, as a Debian `Packages` index gives
/// them (a pool path, a SHA256); `version` changes the digests of one record in a hundred,
/// as a day's new index does.
fn notes(count: usize, version: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let key = format!("d/debian/pool/main/p/pkg{i}/pkg{i}_1.{i}-1_amd64.deb");
            let changed = if i % 100 == 0 { version } else { 0 };
            let digest: Vec<u8> = (0..33u8).map(|b| b ^ (i as u8) ^ changed).collect();
            (key.into_bytes(), digest)
        })
        .collect()
}

/// Time to record `count` digest records into a fresh index, then a new version of them
/// (1% changed), then the same again.
fn notes_figures(count: usize, base: &Path) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let index = SledIndex::open(dir.path()).unwrap();
    let mut times = Vec::new();
    for version in [0u8, 1, 1, 2] {
        let records = notes(count, version);
        let started = Instant::now();
        index.put_notes(&records).unwrap();
        times.push(started.elapsed());
    }
    println!(
        "digest records, {count}: fresh {:.2?}, a new version (1% changed) {:.2?}, the same again {:.2?}, another version {:.2?}",
        times[0], times[1], times[2], times[3]
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Some(count) = std::env::var("NOTES").ok().and_then(|v| v.parse().ok()) {
        let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
        notes_figures(count, Path::new(&base));
        return;
    }
    let objects: usize = std::env::var("OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // cache.disk_inline_max's default; INLINE_MAX=0 measures the one-file-per-body layout.
    let inline_max: u64 = std::env::var("INLINE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8 << 10);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let started = Instant::now();
    {
        let store = DiskStore::open(dir.path(), u64::MAX, false).unwrap();
        for index in 0..objects {
            let entry = entry(index);
            let body = entry.body.as_bytes().unwrap().clone();
            // As the tier stores a body held in memory: in the index up to INLINE_MAX.
            let body = if body.len() as u64 <= inline_max {
                NewBody::Inline(body)
            } else {
                NewBody::File(store.write_temp(&body).unwrap())
            };
            store.commit(&entry.meta, Some(body)).unwrap();
        }
        store.flush().unwrap();
    }
    let fill = started.elapsed();
    // The reserve (a fixed 4 MiB kept for the index, see `disk::reserve`) is no object's.
    let reserve = std::fs::metadata(dir.path().join(outpost::cache::disk::reserve::RESERVE_FILE))
        .map_or((0, 0), |meta| {
            use std::os::unix::fs::MetadataExt;
            (meta.len(), meta.blocks() * 512)
        });
    let (on_disk, allocated) = dir_bytes(dir.path());
    let (on_disk, allocated) = (on_disk - reserve.0, allocated - reserve.1);
    let bodies = (objects * BODY) as u64;
    let per_object = (on_disk - bodies) as f64 / objects as f64;
    let per_object_allocated = (allocated - bodies) as f64 / objects as f64;
    let blob_files = dir_bytes(&dir.path().join("blobs"));
    let index = dir_bytes(&dir.path().join("index"));

    let opened = Instant::now();
    let store = DiskStore::open(dir.path(), u64::MAX, false).unwrap();
    let open_time = opened.elapsed();
    let swept = Instant::now();
    let report = store.sweep().unwrap();
    let sweep_time = swept.elapsed();
    drop(store);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let launched = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--origin", "http://127.0.0.1:9", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cache-dir")
        .arg(dir.path())
        .env("OUTPOST_LOG__ACCESS_LOG", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut served = false;
    while Instant::now() < deadline {
        if first_hit(port) {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let first_request = launched.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    // Last, as opening the index outside the store drops its recorded totals.
    let (rows, row_bytes) = SledIndex::open(&dir.path().join("index"))
        .and_then(|index| index.row_bytes())
        .unwrap();

    println!(
        "disk tier, {objects} objects of {BODY} B (dir on {})",
        dir.path().display()
    );
    println!(
        "  fill (write, index, no fsync): {:.2?} ({:.0} objects/s)",
        fill,
        objects as f64 / fill.as_secs_f64()
    );
    println!("  file bytes: {on_disk} B = bodies {bodies} B + {per_object:.0} B per object beyond its body");
    println!("  allocated blocks: {allocated} B = {per_object_allocated:.0} B per object beyond its body");
    println!(
        "    blobs/ {} B ({} B allocated), index/ {} B",
        blob_files.0, blob_files.1, index.0
    );
    println!(
        "    index rows: {rows}, {:.0} B each of key and value; index files {:.2}x that",
        row_bytes as f64 / rows as f64,
        index.0 as f64 / row_bytes as f64
    );
    println!("  open (no body read): {open_time:.2?}; full sweep: {sweep_time:.2?} ({report:?})");
    println!(
        "  binary start to first hit: {first_request:.2?} ({})",
        if served {
            "served from disk"
        } else {
            "NOT served"
        }
    );
}
