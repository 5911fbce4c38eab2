//! The status board: `/status.json` for scripts and the `/status` page rendered in headless
//! Chromium (Debian's `chromium`, installed by `.ci/run`), with the numbers checked in the
//! rendered page and a screenshot taken.

use crate::support;

use support::*;

/// Traffic with a known shape: /hot once missed then hit three times, /cold missed once,
/// and one origin failure.
async fn traffic() -> (Origin, Proxy, Proxy) {
    let origin = Origin::start(vec![
        (
            "/hot",
            Fixture::with_headers(200, &[("cache-control", "max-age=600")], "hot body"),
        ),
        (
            "/cold",
            Fixture::with_headers(200, &[("cache-control", "no-store")], "cold"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..4 {
        get(&proxy.url("/hot"), &[("host", "site.test")]).await;
    }
    get(&proxy.url("/cold"), &[("host", "site.test")]).await;
    let dead = Proxy::start(&format!("http://{}", closed_port().await), "").await;
    (origin, proxy, dead)
}

async fn status_json(admin: &str, requests: u64) -> serde_json::Value {
    // Requests are counted when the server drops a finished body: poll until all are in.
    eventually_some("all requests to be counted", || async {
        let status: serde_json::Value =
            serde_json::from_slice(&get(&format!("{admin}/status.json"), &[]).await.body).unwrap();
        (status["requests"] == requests).then_some(status)
    })
    .await
}

#[tokio::test]
async fn status_json_reports_ratios_top_keys_and_errors() {
    let (_origin, proxy, dead) = traffic().await;
    let admin_url = start_admin(&proxy).await;
    let status = status_json(&admin_url, 5).await;
    assert_eq!(status["by_cache_status"]["hit"], 3);
    assert_eq!(status["hit_ratio"], 0.6, "3 hits of 5 lookups");
    assert_eq!(status["top_keys_by_hits"][0]["url"], "http://site.test/hot");
    assert_eq!(status["top_keys_by_hits"][0]["hits"], 3);
    assert_eq!(status["tiers"]["memory"]["entries"], 1);
    // The tier's share: the capacity less the fills' budget (an eighth by default) and the
    // process's reserve.
    let capacity = status["tiers"]["memory"]["capacity"].as_u64().unwrap();
    let reserve = status["tiers"]["memory"]["reserve"].as_u64().unwrap();
    assert_eq!(
        reserve,
        30 << 20,
        "the default reserve at the default capacity"
    );
    assert_eq!(
        status["tiers"]["memory"]["capacity_now"].as_u64(),
        Some(capacity - capacity / 8 - reserve)
    );
    assert!(status["requests_per_second"].as_f64().unwrap() >= 0.0);

    get(&dead.url("/x"), &[]).await;
    let dead_admin = start_admin(&dead).await;
    let dead_status = status_json(&dead_admin, 1).await;
    assert_eq!(
        dead_status["recent_origin_errors"][0]["error"],
        "connection_refused"
    );
}

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
}

/// Runs headless Chromium on `url` with `extra` flags; returns stdout.
fn run_chromium(binary: &str, profile: &std::path::Path, url: &str, extra: &[&str]) -> String {
    let output = std::process::Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The page renders the live numbers (hit ratio, requests, top key) in a real browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_numbers_in_chromium() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("OUTPOST_REQUIRE_CHROMIUM").is_none(),
            "chromium is required here (apt-get install chromium)"
        );
        eprintln!("chromium not installed: status page not rendered (CI installs it)");
        return;
    };
    let (_origin, proxy, _dead) = traffic().await;
    let admin_url = start_admin(&proxy).await;
    status_json(&admin_url, 5).await;
    let page = format!("{admin_url}/status");
    let profile = tempfile::tempdir().unwrap();
    let shots = tempfile::tempdir().unwrap();
    let screenshot = shots.path().join("status.png");
    let (dom, shot_flag) = (
        page.clone(),
        format!("--screenshot={}", screenshot.display()),
    );
    let profile_path = profile.path().to_path_buf();
    let dom = tokio::task::spawn_blocking(move || {
        let dom = run_chromium(binary, &profile_path, &dom, &["--dump-dom"]);
        run_chromium(binary, &profile_path, &page, &[&shot_flag]);
        dom
    })
    .await
    .unwrap();
    assert!(
        dom.contains("id=\"hit_ratio\">60.0%<"),
        "hit ratio rendered: {dom}"
    );
    assert!(dom.contains("http://site.test/hot"), "top key rendered");
    assert!(
        dom.contains("id=\"memory\">1 entry<"),
        "memory tier rendered"
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
    if let Some(keep) = std::env::var_os("OUTPOST_KEEP_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
}
