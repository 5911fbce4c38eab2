//! Per-request header work on the pass-through path: hop-by-hop stripping, forwarding
//! headers at the trust boundary, Via, routing and the framing checks, on a realistic
//! browser request head.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use outpost::config::{Config, ForwardingConfig};
use outpost::pipeline::check_request;
use outpost::pipeline::forwarding::{self, Downstream, ForwardingPolicy};
use outpost::pipeline::route::{request_host, Router};

fn browser_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "static.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("upgrade-insecure-requests", "1"),
        ("x-forwarded-for", "203.0.113.9"),
        ("if-none-match", "\"abc123\""),
    ] {
        headers.append(name, HeaderValue::from_static(value));
    }
    headers
}

fn bench_headers(c: &mut Criterion) {
    let template = browser_headers();
    let downstream = Downstream {
        peer: "198.51.100.4:51000".parse().unwrap(),
        scheme: "http",
        host: Some("static.example.com"),
    };
    let untrusted = ForwardingPolicy::new(&ForwardingConfig::default());
    let trusted = ForwardingPolicy::new(&ForwardingConfig {
        trusted_proxies: vec!["198.51.100.0/24".parse().unwrap()],
        ..ForwardingConfig::default()
    });

    c.bench_function("request_headers/untrusted_peer", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |headers| {
                forwarding::strip_hop_by_hop(headers);
                untrusted.apply(headers, downstream);
                forwarding::append_via(headers, &HeaderValue::from_static("1.1 outpost"));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("request_headers/trusted_peer", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |headers| {
                forwarding::strip_hop_by_hop(headers);
                trusted.apply(headers, downstream);
                forwarding::append_via(headers, &HeaderValue::from_static("1.1 outpost"));
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let config = Config::from_toml_str(
        r#"
        origin = "http://127.0.0.1:9000"
        [[sites]]
        hosts = ["static.example.com", "*.cdn.example.com"]
        origin = "http://127.0.0.1:9001"
        [[sites]]
        hosts = ["static.example.com"]
        path_prefix = "/debian/"
        origin = "http://127.0.0.1:9002"
        "#,
        &Default::default(),
    )
    .unwrap();
    let metrics = std::sync::Arc::new(outpost::telemetry::metrics::Metrics::new());
    let pools = outpost::upstream::pool::Pools::new(&config, None, &metrics);
    let router = Router::new(&config, &pools);
    let mut request = Request::get("/debian/pool/main/h/hello/hello_2.10-3_amd64.deb")
        .body(())
        .unwrap();
    *request.headers_mut() = template.clone();
    let (request, ()) = request.into_parts();
    c.bench_function("request_filter_and_route", |b| {
        b.iter(|| {
            check_request(black_box(&request)).unwrap();
            let host = request_host(black_box(&request), "http").unwrap();
            black_box(
                router
                    .route(host.as_deref(), request.uri.path())
                    .unwrap()
                    .name
                    .len(),
            )
        })
    });
}

criterion_group!(benches, bench_headers);
criterion_main!(benches);
