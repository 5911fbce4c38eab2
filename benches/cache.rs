//! Hot-path pieces of the cache: key computation, variant selection among several
//! variants, and a whole hit (lookup, freshness decision, response built from the entry).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use outpost::cache::entry::{EntryMeta, StoredResponse};
use outpost::cache::key::{PrimaryKey, Vary};
use outpost::cache::memory::MemoryTier;
use outpost::cache::policy::{self, Freshness, PolicySettings};
use outpost::pipeline::{respond, Proxy};
use outpost::Config;

fn entry(path: &str, language: &'static str, vary: bool) -> StoredResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert("etag", HeaderValue::from_static("\"abcdef0123456789\""));
    headers.insert(
        "last-modified",
        HeaderValue::from_static("Wed, 01 Jan 2025 00:00:00 GMT"),
    );
    headers.insert("content-length", HeaderValue::from_static("1024"));
    if vary {
        headers.insert(
            "vary",
            HeaderValue::from_static("Accept-Encoding, Accept-Language"),
        );
    }
    let now = SystemTime::now();
    let freshness = Freshness::compute(
        StatusCode::OK,
        &headers,
        &PolicySettings::default(),
        now,
        now,
    );
    let vary = Vary::from_response(&headers);
    let mut request = HeaderMap::new();
    request.insert(
        "accept-encoding",
        HeaderValue::from_static("gzip, deflate, br"),
    );
    request.insert("accept-language", HeaderValue::from_static(language));
    let variant = vary.variant_key(&request).unwrap();
    let key = PrimaryKey::new("http", "static.example.com", path);
    let url = format!("http://static.example.com{path}");
    let meta = EntryMeta::new(
        key,
        url,
        (StatusCode::OK, http::Version::HTTP_11),
        headers,
        (vary, variant),
        freshness,
    );
    StoredResponse::new(meta, Bytes::from(vec![b'x'; 1024]))
}

fn bench_cache(c: &mut Criterion) {
    c.bench_function("key/primary", |b| {
        b.iter(|| {
            PrimaryKey::new(
                black_box("http"),
                black_box("static.example.com"),
                black_box("/assets/app.3f9a1c.js?v=12"),
            )
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let memory = MemoryTier::new(
        256 << 20,
        16,
        outpost::config::MemoryPolicy::Lru,
        Default::default(),
        None,
    );
    let languages = ["en", "fr", "de", "es", "it", "nl"];
    runtime.block_on(async {
        for language in languages {
            memory
                .insert(Arc::new(entry("/page", language, true)))
                .await;
        }
        memory.insert(Arc::new(entry("/plain", "en", false))).await;
    });
    let mut request = HeaderMap::new();
    request.insert(
        "accept-encoding",
        HeaderValue::from_static("gzip, deflate, br"),
    );
    request.insert("accept-language", HeaderValue::from_static("nl"));
    let set = runtime
        .block_on(memory.get(&PrimaryKey::new("http", "static.example.com", "/page")))
        .unwrap();
    c.bench_function("variant/select_last_of_6", |b| {
        b.iter(|| black_box(set.select(black_box(&request))).is_some())
    });

    let config =
        Config::from_toml_str("origin = \"http://127.0.0.1:9\"", &Default::default()).unwrap();
    let proxy = Proxy::new(&config).unwrap();
    let (parts, ()) = Request::get("/plain").body(()).unwrap().into_parts();
    let plain_key = PrimaryKey::new("http", "static.example.com", "/plain");
    c.bench_function("hit/lookup_decide_respond_1k", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let now = SystemTime::now();
                let key = PrimaryKey::new("http", "static.example.com", black_box("/plain"));
                debug_assert_eq!(key, plain_key);
                let set = memory.get(&key).await.unwrap();
                let entry = set.select(&parts.headers).unwrap();
                let directives = policy::request_directives(&parts.headers);
                let reuse = policy::evaluate_reuse(&entry.meta.freshness, &directives, now);
                black_box(reuse);
                black_box(respond::from_entry(
                    &proxy,
                    entry,
                    &parts,
                    now + Duration::from_secs(1),
                ))
            })
        })
    });
}

criterion_group!(benches, bench_cache);
criterion_main!(benches);
