//! Forward-proxy mode for absolute-form requests (issue 14 item 5): a client that has
//! outpost as its HTTP proxy (apt's `Acquire::http::Proxy`, `http_proxy=`) sends
//! `GET http://host/path` (RFC 9112 §3.2.2); for `forward_proxy.allow` hosts it reaches that
//! host and is cached under the target URL, for every other host it is routed like any
//! request, never to the host it names.

use crate::support;

use support::*;

/// An absolute-form GET for `target` (`host:port`) and `path`, as a proxy client sends it.
fn absolute_get(target: &str, path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\n{extra}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

fn header_of<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    reply.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// RFC 9112 §3.2.2 and RFC 9111 §2: an allowed target is fetched from its own host once
/// and then served from the cache; a target not allowed goes to the configured origin.
#[tokio::test]
async fn allowed_targets_are_fetched_from_their_host_and_cached() {
    let upstream = Origin::start(vec![(
        "/pool/main/a.deb",
        Fixture::with_headers(200, &[("cache-control", "max-age=600")], "deb bytes"),
    )])
    .await;
    let elsewhere = Origin::start(vec![("/pool/main/a.deb", Fixture::ok("elsewhere"))]).await;
    let reverse = Origin::start(vec![("/pool/main/a.deb", Fixture::ok("reverse origin"))]).await;
    let allowed = upstream.addr.to_string();
    let proxy = Proxy::start(
        &reverse.url(),
        &format!("[forward_proxy]\nallow = [\"{allowed}\"]\n"),
    )
    .await;

    for round in 0..2 {
        let reply = raw_exchange(proxy.addr, &absolute_get(&allowed, "/pool/main/a.deb", "")).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("deb bytes"), "{reply}");
        let status = header_of(&reply, "cache-status").unwrap_or_default();
        if round == 1 {
            assert!(status.starts_with("outpost; hit"), "{status}");
        }
    }
    assert_eq!(
        upstream.hits("/pool/main/a.deb"),
        1,
        "fetched once, then a hit"
    );
    let seen = upstream.last("/pool/main/a.deb");
    assert_eq!(seen.headers["host"], allowed.as_str());

    // Not allowed: routed like a reverse request, never to the named host.
    let not_allowed = elsewhere.addr.to_string();
    let reply = raw_exchange(
        proxy.addr,
        &absolute_get(&not_allowed, "/pool/main/a.deb", ""),
    )
    .await;
    assert!(reply.ends_with("reverse origin"), "{reply}");
    assert_eq!(elsewhere.hits("/pool/main/a.deb"), 0);
}

/// RFC 9110 §11.7.1: with credentials configured, an allowed target needs them (407 and a
/// Basic challenge otherwise), and Proxy-Authorization is for outpost, never the origin.
#[tokio::test]
async fn allowed_targets_need_the_configured_credentials() {
    let upstream = Origin::start(vec![("/simple/", Fixture::ok("index"))]).await;
    let reverse = Origin::start(vec![]).await;
    let allowed = upstream.addr.to_string();
    let proxy = Proxy::start(
        &reverse.url(),
        "[forward_proxy]\nallow = [\"127.0.0.1:*\"]\ncredentials = \"alice:s3cret\"\n",
    )
    .await;

    let refused = raw_exchange(proxy.addr, &absolute_get(&allowed, "/simple/", "")).await;
    assert!(refused.starts_with("HTTP/1.1 407"), "{refused}");
    assert_eq!(
        header_of(&refused, "proxy-authenticate"),
        Some("Basic realm=\"outpost\"")
    );
    let wrong = "Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n";
    let refused = raw_exchange(proxy.addr, &absolute_get(&allowed, "/simple/", wrong)).await;
    assert!(refused.starts_with("HTTP/1.1 407"), "{refused}");
    assert_eq!(upstream.hits("/simple/"), 0);

    // base64("alice:s3cret")
    let right = "Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n";
    let reply = raw_exchange(proxy.addr, &absolute_get(&allowed, "/simple/", right)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("index"), "{reply}");
    assert!(upstream
        .last("/simple/")
        .headers
        .get("proxy-authorization")
        .is_none());
}

/// An operator's site for a host wins over the forward-proxy allowance for it.
#[tokio::test]
async fn a_site_naming_the_host_wins_over_forwarding() {
    let upstream = Origin::start(vec![("/x", Fixture::ok("named host"))]).await;
    let site_origin = Origin::start(vec![("/x", Fixture::ok("site origin"))]).await;
    let reverse = Origin::start(vec![]).await;
    let config = format!(
        "[forward_proxy]\nallow = [\"127.0.0.1:*\"]\n\n[[sites]]\nhosts = [\"127.0.0.1\"]\norigin = \"{}\"\n",
        site_origin.url()
    );
    let proxy = Proxy::start(&reverse.url(), &config).await;
    let reply = raw_exchange(
        proxy.addr,
        &absolute_get(&upstream.addr.to_string(), "/x", ""),
    )
    .await;
    assert!(reply.ends_with("site origin"), "{reply}");
    assert_eq!(upstream.hits("/x"), 0);
}
