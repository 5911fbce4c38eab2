//! Large bodies stream through outpost in both directions with flat memory: nothing on the
//! pass-through path buffers a whole body. Alone in its test binary, so the process's peak
//! RSS belongs to this test.

mod support;

use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::sync::Notify;

const SIZE: u64 = 200 << 20;
/// Far below SIZE: buffering either body would blow through it.
const ALLOWED_GROWTH_KIB: u64 = 48 << 10;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}

/// 200 MiB down and 200 MiB up through the proxy; the process's peak RSS grows by far less
/// than one body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_flat_memory() {
    let origin = Origin::start(vec![
        (
            "/download",
            Fixture::Stream {
                size: SIZE,
                dropped: Arc::new(Notify::new()),
            },
        ),
        ("/upload", Fixture::CountBody),
        ("/warm", Fixture::ok("warm")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    assert_eq!(get(&proxy.url("/warm"), &[]).await.text(), "warm");
    let rss_before = status_kib("VmRSS:");

    let response = client()
        .request(
            Request::get(proxy.url("/download"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-length"], SIZE.to_string());
    let mut body = response.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);

    let uploader: Client<_, PatternBody> = Client::builder(TokioExecutor::new()).build_http();
    let upload = Request::post(proxy.url("/upload"))
        .body(PatternBody::new(SIZE, Arc::new(Notify::new())))
        .unwrap();
    let response = uploader.request(upload).await.unwrap();
    let counted = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&counted), SIZE.to_string());

    let growth = status_kib("VmHWM:").saturating_sub(rss_before);
    assert!(
        growth < ALLOWED_GROWTH_KIB,
        "peak RSS grew by {growth} KiB while streaming 2 x {} MiB",
        SIZE >> 20
    );
}
