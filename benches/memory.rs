//! Memory cost of the memory tier, measured in-process: fills a tier of a given capacity
//! with 1 KiB responses carrying realistic headers, then reports entries, the process's
//! RSS growth against the configured capacity, and bytes of overhead per entry beyond its
//! body. Same allocator as the `outpost` binary.
//!
//! Run: `cargo bench --bench memory` (prints a table; a benchmark, not a test).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use outpost::cache::entry::{EntryMeta, StoredResponse};
use outpost::cache::key::{PrimaryKey, VariantKey, Vary};
use outpost::cache::memory::MemoryTier;
use outpost::cache::policy::{Freshness, PolicySettings};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn entry(index: u64, body_size: usize) -> StoredResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        "etag",
        HeaderValue::from_str(&format!("\"{index:016x}\"")).unwrap(),
    );
    headers.insert(
        "last-modified",
        HeaderValue::from_static("Wed, 01 Jan 2025 00:00:00 GMT"),
    );
    headers.insert(
        "date",
        HeaderValue::from_static("Fri, 27 Nov 2026 04:00:00 GMT"),
    );
    headers.insert("content-length", HeaderValue::from(body_size));
    let now = SystemTime::now();
    let path = format!("/b/1k/object-{index}");
    let freshness = Freshness::compute(
        StatusCode::OK,
        &headers,
        &PolicySettings::default(),
        now,
        now,
    );
    let key = PrimaryKey::new("http", "127.0.0.1:18888", &path);
    let url = format!("http://127.0.0.1:18888{path}");
    let meta = EntryMeta::new(
        key,
        url,
        (StatusCode::OK, http::Version::HTTP_11),
        headers,
        (Vary::None, VariantKey::NONE),
        freshness,
    );
    StoredResponse::new(meta, Bytes::from(vec![(index % 251) as u8; body_size]))
}

/// Fills one tier and prints its table row. Each configuration runs in a fresh process, so
/// pages freed by an earlier run cannot hide the next one's growth.
fn measure(capacity_mib: u64, body_size: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let capacity = capacity_mib << 20;
    let before = rss_bytes();
    let tier = MemoryTier::new(
        capacity,
        16,
        outpost::config::MemoryPolicy::Lru,
        Default::default(),
        None,
    );
    let (entries, weighed) = runtime.block_on(async {
        // Insert twice the capacity's worth, so eviction runs and the tier is full.
        let total = 2 * capacity / (body_size as u64 + 700);
        for index in 0..total {
            tier.insert(Arc::new(entry(index, body_size))).await;
        }
        tier.usage().await
    });
    let growth = rss_bytes().saturating_sub(before);
    let overhead = growth.saturating_sub(entries * body_size as u64) / entries.max(1);
    println!(
        "| {capacity_mib} MiB | {body_size} B | {entries} | {weighed} | {:.1} MiB | {:.2} | {overhead} B |",
        growth as f64 / (1 << 20) as f64,
        growth as f64 / capacity as f64,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--measure") {
        let capacity_mib = args[position + 1].parse().unwrap();
        let body_size = args[position + 2].parse().unwrap();
        measure(capacity_mib, body_size);
        return;
    }
    println!("| capacity | body | entries kept | weighed bytes | RSS growth | RSS / capacity | overhead per entry beyond body |");
    println!("|---|---|---|---|---|---|---|");
    let me = std::env::current_exe().unwrap();
    for (capacity_mib, body_size) in [
        (64u64, 1024usize),
        (256, 1024),
        (1024, 1024),
        (256, 100 * 1024),
    ] {
        let output = std::process::Command::new(&me)
            .args([
                "--measure",
                &capacity_mib.to_string(),
                &body_size.to_string(),
            ])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
}
