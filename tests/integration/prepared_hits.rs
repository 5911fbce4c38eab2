//! Prepared hits (`pipeline::prepared`, `server::prepared_http1`): a repeated plain memory
//! hit on a cleartext HTTP/1.1 connection is answered from the head the pipeline made for
//! the same request, without the pipeline. These tests show that such an answer is the one
//! the pipeline would have sent (RFC 9111 §4.2 freshness, §5.1 Age, RFC 9211 Cache-Status,
//! RFC 9110 §12.5.3 content coding, the variant Vary selects) and that every request it must
//! not answer still reaches the pipeline.
//!
//! Each `get` opens a connection of its own, so in a sequence of requests for one URL the
//! first is a miss, the second a hit the pipeline answers and prepares, the third and later
//! prepared answers; `outpost_prepared_hits_total` shows which were.

use crate::support;

use std::io::Read;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Prepared answers counted so far (`outpost_prepared_hits_total`).
fn prepared(proxy: &Proxy) -> u64 {
    proxy.outpost.proxy().metrics().prepared_hits.get()
}

/// Waits for the prepared-answer count to reach `expected`: answers are counted just after
/// their last byte is written, which can be just after the client has read it.
async fn prepared_reaches(proxy: &Proxy, expected: u64) {
    eventually("the prepared-answer count", || {
        let count = prepared(proxy);
        assert!(
            count <= expected,
            "{count} prepared answers, expected {expected}"
        );
        count == expected
    })
    .await;
}

/// A reply's fields as a sorted list, leaving out those that change with the moment.
fn lasting_fields(reply: &Reply) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "age" | "cache-status"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
        .collect();
    fields.sort();
    fields
}

fn cache_status_members(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get_all("cache-status")
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .collect()
}

fn cached(body: &str) -> Fixture {
    fixed(&[("cache-control", "max-age=600")], body)
}

/// The pipeline's hit and the prepared answer after it carry the same status, fields and
/// body; Age and our Cache-Status member are written for each (RFC 9111 §5.1, RFC 9211 §2:
/// ours comes after the member of the cache nearer the origin).
#[tokio::test]
async fn a_prepared_hit_is_the_pipelines_hit_written_for_its_moment() {
    let origin = Origin::start(vec![(
        "/p",
        fixed(
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"p1\""),
                ("cache-status", "upstream; hit"),
                ("x-kept", "yes"),
            ],
            "prepared body",
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let miss = get(&proxy.url("/p"), &[]).await;
    assert!(!is_hit(&miss));
    let answered = get(&proxy.url("/p"), &[]).await;
    let prepared = get(&proxy.url("/p"), &[]).await;
    prepared_reaches(&proxy, 1).await;

    assert!(is_hit(&answered) && is_hit(&prepared));
    assert_eq!(prepared.status, answered.status);
    assert_eq!(prepared.body, answered.body);
    assert_eq!(lasting_fields(&prepared), lasting_fields(&answered));
    assert!(prepared.header("date").is_some());
    let age: u64 = prepared.header("age").unwrap().parse().unwrap();
    assert!(age < 600, "age {age}");
    let members = cache_status_members(&prepared);
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(members[0], "upstream; hit");
    assert!(members[1].starts_with("outpost; hit; ttl="), "{members:?}");
    assert_eq!(origin.hits("/p"), 1);
}

/// Vary (RFC 9111 §4.1): each prepared answer is for the request fields it was made for, so
/// two languages keep getting their own variants.
#[tokio::test]
async fn prepared_hits_keep_to_the_variant_their_fields_select() {
    let origin = Origin::start(vec![(
        "/v",
        Fixture::Echo {
            name: "accept-language",
            headers: header_list(&[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _round in 0..4 {
        for language in ["en", "fr"] {
            let reply = get(&proxy.url("/v"), &[("accept-language", language)]).await;
            assert_eq!(reply.text(), language);
        }
    }
    prepared_reaches(&proxy, 4).await;
    assert_eq!(origin.hits("/v"), 2);
}

/// Content coding (RFC 9110 §12.5.3): a client that accepts gzip keeps getting the stored
/// gzip encoding from prepared answers, and one that does not, the identity body.
#[tokio::test]
async fn prepared_hits_send_the_coding_the_client_accepts() {
    let text = "compressible text, again and again. ".repeat(200);
    let origin = Origin::start(vec![(
        "/z",
        fixed(
            &[
                ("cache-control", "max-age=600"),
                ("content-type", "text/plain"),
            ],
            &text,
        ),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    // The encoding is made by a fill after the first hit that asks for it: a few requests
    // before it is stored and prepared.
    eventually_some("a prepared gzip answer", || async {
        let reply = get(&proxy.url("/z"), &[("accept-encoding", "gzip")]).await;
        assert_eq!(reply.header("content-encoding"), Some("gzip"));
        assert!(reply.header("vary").unwrap().contains("ccept-Encoding"));
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&reply.body[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, text);
        (prepared(&proxy) >= 1).then_some(())
    })
    .await;
    let before = prepared(&proxy);
    // The pipeline answers the first (and prepares it), the others are prepared answers.
    for _ in 0..3 {
        let identity = get(&proxy.url("/z"), &[]).await;
        assert_eq!(identity.header("content-encoding"), None);
        assert_eq!(identity.text(), text);
    }
    prepared_reaches(&proxy, before + 2).await;
    assert_eq!(origin.hits("/z"), 1);
}

/// A purge (hard, then soft) ends a prepared answer at once: the next request goes to the
/// origin, or revalidates (RFC 9111 §4.3).
#[tokio::test]
async fn a_purge_ends_prepared_answers() {
    let origin = Origin::start(vec![
        (
            "/hard",
            Fixture::sequence(vec![cached("old"), cached("new")]),
        ),
        (
            "/soft",
            Fixture::Validated {
                etag: "\"s1\"",
                headers: header_list(&[("cache-control", "max-age=600")]),
                body: bytes::Bytes::from_static(b"soft body"),
                not_modified_headers: header_list(&[("cache-control", "max-age=600")]),
            },
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    for path in ["/hard", "/soft"] {
        for _ in 0..3 {
            get(&proxy.url(path), &[]).await;
        }
    }
    prepared_reaches(&proxy, 2).await;
    assert_eq!(get(&proxy.url("/hard"), &[]).await.text(), "old");

    let base = format!("http://{}", proxy.addr);
    post(&format!("{admin}/purge?url={base}/hard")).await;
    let after = get(&proxy.url("/hard"), &[]).await;
    assert_eq!((after.text().as_str(), is_hit(&after)), ("new", false));
    assert_eq!(origin.hits("/hard"), 2);

    post(&format!("{admin}/purge?url={base}/soft&soft=true")).await;
    let revalidated = get(&proxy.url("/soft"), &[]).await;
    assert_eq!(revalidated.text(), "soft body");
    assert!(
        cache_status(&revalidated).contains("fwd=stale; fwd-status=304"),
        "{}",
        cache_status(&revalidated)
    );
    assert_eq!(origin.last("/soft").headers["if-none-match"], "\"s1\"");
}

/// RFC 9111 §4.2: a prepared answer is never stale. The entry lives one second; every hit
/// until it expires is fresh, and then the origin is asked.
#[tokio::test]
async fn a_prepared_answer_ends_when_its_entry_goes_stale() {
    let origin = Origin::start(vec![(
        "/brief",
        fixed(&[("cache-control", "max-age=1")], "brief"),
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/brief"), &[]).await;
    eventually_some("the entry to expire", || async {
        let reply = get(&proxy.url("/brief"), &[]).await;
        if !is_hit(&reply) {
            return Some(());
        }
        assert_eq!(reply.header("age"), Some("0"), "a hit past its lifetime");
        assert_eq!(cache_status(&reply), "outpost; hit; ttl=1");
        None
    })
    .await;
    assert_eq!(origin.hits("/brief"), 2);
}

/// Requests whose fields the prepared path does not judge reach the pipeline: no-cache
/// (RFC 9111 §5.2.1.4), a conditional (RFC 9110 §13.1.2), a range (RFC 9110 §14.2), HEAD.
#[tokio::test]
async fn requests_a_prepared_answer_cannot_judge_reach_the_pipeline() {
    let origin = Origin::start(vec![(
        "/j",
        Fixture::Validated {
            etag: "\"j1\"",
            headers: header_list(&[("cache-control", "max-age=600")]),
            body: bytes::Bytes::from_static(b"judged body"),
            not_modified_headers: header_list(&[("cache-control", "max-age=600")]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..3 {
        get(&proxy.url("/j"), &[]).await;
    }
    prepared_reaches(&proxy, 1).await;

    let no_cache = get(&proxy.url("/j"), &[("cache-control", "no-cache")]).await;
    assert!(!is_hit(&no_cache), "{}", cache_status(&no_cache));
    assert_eq!(origin.hits("/j"), 2);
    let conditional = get(&proxy.url("/j"), &[("if-none-match", "\"j1\"")]).await;
    assert_eq!(conditional.status, 304);
    let ranged = get(&proxy.url("/j"), &[("range", "bytes=0-5")]).await;
    assert_eq!(
        (ranged.status.as_u16(), ranged.text().as_str()),
        (206, "judged")
    );
    let head = send(
        &client(),
        http::Request::head(proxy.url("/j"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    // None of the above was a prepared answer. The no-cache request's revalidation stored
    // the entry anew (RFC 9111 §4.3.4), so the pipeline answers (and prepares) the next
    // plain request, and the one after is a prepared answer again.
    assert_eq!(prepared(&proxy), 1);
    for _ in 0..2 {
        assert_eq!(get(&proxy.url("/j"), &[]).await.text(), "judged body");
    }
    prepared_reaches(&proxy, 2).await;
}

/// Pipelined requests (RFC 9112 §9.3.2) on one connection are answered in order: prepared
/// ones, a miss served by hyper alone, and prepared ones again after it (the last asking
/// to close, which the prepared answer honours, RFC 9112 §9.6).
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_a_miss() {
    let origin = Origin::start(vec![
        ("/a", cached("alpha")),
        ("/b", cached("bravo")),
        ("/c", cached("charlie")),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for path in ["/a", "/b"] {
        get(&proxy.url(path), &[]).await;
        get(&proxy.url(path), &[]).await;
    }
    let host = proxy.addr.to_string();
    let requests: String = ["/a", "/b", "/a", "/c", "/a", "/b"]
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let close = if i == 5 { "Connection: close\r\n" } else { "" };
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{close}\r\n")
        })
        .collect();
    let raw = send_until_closed(&proxy, &requests, "the server closes after the last").await;
    let bodies: Vec<String> = split_responses(&raw, &[false; 6])
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, "HTTP/1.1 200 OK");
            String::from_utf8(body).unwrap()
        })
        .collect();
    assert_eq!(
        bodies,
        ["alpha", "bravo", "alpha", "charlie", "alpha", "bravo"]
    );
    // All but the miss were prepared answers: the connection came back after it.
    prepared_reaches(&proxy, 5).await;
    assert_eq!(origin.hits("/c"), 1);
}

/// A head that arrives in pieces is answered once whole; an oversized one after a prepared
/// answer is refused as hyper refuses it (431), not answered.
#[tokio::test]
async fn heads_in_pieces_and_oversized_heads_are_read_as_hyper_reads_them() {
    let origin = Origin::start(vec![("/s", cached("split"))]).await;
    let proxy = Proxy::start(&origin.url(), "[server]\nmax_header_bytes = \"8KiB\"").await;
    get(&proxy.url("/s"), &[]).await;
    get(&proxy.url("/s"), &[]).await;
    let host = proxy.addr.to_string();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("GET /s HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let (first, rest) = head.split_at(20);
    stream.write_all(first.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(rest.as_bytes()).await.unwrap();
    let huge = format!(
        "GET /s HTTP/1.1\r\nHost: {host}\r\nAccept: {}\r\n\r\n",
        "x".repeat(16 * 1024)
    );
    let reply = read_response(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.ends_with("split"), "{reply}");
    stream.write_all(huge.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw)).await;
    let refused = String::from_utf8_lossy(&raw);
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    prepared_reaches(&proxy, 1).await;
}

/// Reads one response with a Content-Length body from `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let head = read_head(stream).await;
    let text = String::from_utf8_lossy(&head).to_string();
    let end = text.find("\r\n\r\n").unwrap() + 4;
    let len: usize = text[..end]
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = head[end..].to_vec();
    while body.len() < len {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the body was cut short");
        body.extend_from_slice(&buf[..n]);
    }
    format!("{}{}", &text[..end], String::from_utf8_lossy(&body))
}

/// The access log line of a prepared answer says what the pipeline's says for the same
/// request, timing aside.
#[tokio::test]
async fn a_prepared_answer_is_logged_as_the_pipeline_logs_a_hit() {
    let origin = Origin::start(vec![("/l", cached("logged"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let config = format!(
        "[log]\naccess_log_format = \"json\"\naccess_log_path = \"{}\"",
        path.display()
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    let fields = [("host", "site.test"), ("user-agent", "tester/1")];
    for _ in 0..3 {
        get(&proxy.url("/l?q=1"), &fields).await;
    }
    prepared_reaches(&proxy, 1).await;
    let lines = crate::admin::log_lines(&path, 3).await;
    let lasting = |line: &str| {
        let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
        let object = value.as_object_mut().unwrap();
        for moment in ["time", "duration_ms", "ttl"] {
            object.remove(moment);
        }
        value
    };
    assert_eq!(lasting(&lines[2]), lasting(&lines[1]));
    let prepared: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(prepared["cache"], "hit");
    assert_eq!(prepared["target"], "/l?q=1");
    assert_eq!(prepared["complete"], true);
}

/// `server.prepared_hits = false`: every request goes through the pipeline.
#[tokio::test]
async fn prepared_hits_can_be_turned_off() {
    let origin = Origin::start(vec![("/o", cached("off"))]).await;
    let proxy = Proxy::start(&origin.url(), "[server]\nprepared_hits = false").await;
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("/o"), &[]).await.text(), "off");
    }
    assert_eq!(prepared(&proxy), 0);
}

/// RFC 9112 §6.3 (request smuggling): a head with both Content-Length and
/// Transfer-Encoding after prepared answers on the same connection, even pipelined behind
/// one, is refused with a 400 as on a fresh connection, and nothing reaches the origin.
#[tokio::test]
async fn a_smuggling_head_behind_a_prepared_answer_is_refused() {
    let origin = Origin::start(vec![("/s", cached("safe"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/s"), &[]).await;
    get(&proxy.url("/s"), &[]).await;
    let host = proxy.addr.to_string();
    let exchange = format!(
        "GET /s HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /s HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /s HTTP/1.1\r\nHost: {host}\r\n\r\n"
    );
    let reply = raw_exchange(proxy.addr, exchange.as_bytes()).await;
    let statuses: Vec<&str> = reply
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &reply[at..at + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 400"], "{reply}");
    assert!(
        reply.contains("proxy-status: outpost; error=http_request_error"),
        "{reply}"
    );
    assert_eq!(origin.hits("/s"), 1);
    prepared_reaches(&proxy, 1).await;
}

/// RFC 9112 §9.6: a request with `Connection: close` gets its prepared answer with
/// `connection: close`, as hyper sends it, and then the connection is closed; the
/// keep-alive requests before it shared the answer.
#[tokio::test]
async fn a_request_that_asks_to_close_is_answered_then_closed() {
    let origin = Origin::start(vec![("/c", cached("closing"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/c"), &[]).await;
    get(&proxy.url("/c"), &[]).await;
    let host = proxy.addr.to_string();
    let request = format!("GET /c HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let reply = exchange_until_closed(proxy.addr, request.as_bytes())
        .await
        .expect("the server closes the connection after the answer");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert_eq!(reply.matches("connection: close\r\n").count(), 1, "{reply}");
    assert!(
        reply.contains("cache-status: outpost; hit; ttl="),
        "{reply}"
    );
    assert!(reply.ends_with("\r\n\r\nclosing"), "{reply}");
    prepared_reaches(&proxy, 1).await;
    assert_eq!(origin.hits("/c"), 1);
}

/// Writes `requests` on a new connection and reads until the server closes it; `expect`
/// says why it should.
async fn send_until_closed(proxy: &Proxy, requests: &str, expect: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect(expect)
        .unwrap();
    raw
}

/// Reads one response framed by Content-Length from `stream`: its head and its body.
async fn read_one(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).to_string();
            let len = content_length_in(&head).unwrap_or(0);
            if pending.len() >= end + 4 + len {
                let body = pending[end + 4..end + 4 + len].to_vec();
                pending.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(read > 0, "the connection closed before a whole response");
        pending.extend_from_slice(&chunk[..read]);
    }
}

/// A keep-alive connection (RFC 9112 §9.3) that carries a miss goes on answering prepared
/// hits after it: the miss is served by hyper alone and the connection comes back, so one
/// miss does not leave a browser's or a load balancer's connection on the slow path.
#[tokio::test]
async fn a_connection_answers_prepared_hits_after_a_miss_it_carried() {
    let origin = Origin::start(vec![("/h", cached("hot")), ("/m", cached("missed"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    get(&proxy.url("/h"), &[]).await;
    get(&proxy.url("/h"), &[]).await;
    let host = proxy.addr.to_string();
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut pending = Vec::new();
    let mut answers = Vec::new();
    for path in ["/m", "/h", "/m", "/m", "/h"] {
        stream.write_all(request(path).as_bytes()).await.unwrap();
        let (head, body) = read_one(&mut stream, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        answers.push(String::from_utf8(body).unwrap());
    }
    assert_eq!(answers, ["missed", "hot", "missed", "missed", "hot"]);
    // /m's miss and its first hit (which prepares it) went through the pipeline; the
    // other three were prepared answers on the same connection.
    prepared_reaches(&proxy, 3).await;
    assert_eq!((origin.hits("/m"), origin.hits("/h")), (1, 1));
}

/// A request with a body is never read here as heads: the connection stays with hyper,
/// which reads the body by its length (RFC 9112 §6.2), so a body shaped like a request for
/// a prepared hit is not answered as one (request smuggling, RFC 9112 §11.2).
#[tokio::test]
async fn a_body_shaped_like_a_request_is_not_answered_as_one() {
    let origin = Origin::start(vec![("/h", cached("hot")), ("/post", cached("posted"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..3 {
        get(&proxy.url("/h"), &[]).await;
    }
    prepared_reaches(&proxy, 1).await;
    let host = proxy.addr.to_string();
    let smuggled = format!("GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let requests = format!(
        "GET /post HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /post HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{smuggled}\
         GET /h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        smuggled.len()
    );
    let raw = send_until_closed(&proxy, &requests, "the server closes after the last").await;
    let bodies: Vec<String> = split_responses(&raw, &[false; 3])
        .into_iter()
        .map(|(_, body)| String::from_utf8(body).unwrap())
        .collect();
    assert_eq!(bodies, ["posted", "posted", "hot"]);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 3, "{text}");
}

/// A response that says `Connection: close` ends the connection (RFC 9112 §9.6): a request
/// refused with 400 is not followed by answers to the requests pipelined after it.
#[tokio::test]
async fn a_refused_request_closes_the_connection_before_later_requests() {
    let origin = Origin::start(vec![("/h", cached("hot"))]).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    for _ in 0..3 {
        get(&proxy.url("/h"), &[]).await;
    }
    prepared_reaches(&proxy, 1).await;
    let host = proxy.addr.to_string();
    let requests = format!(
        "GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /a/../h HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n"
    );
    let raw = send_until_closed(&proxy, &requests, "the server closes after the refusal").await;
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at..at + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 400"], "{text}");
    prepared_reaches(&proxy, 2).await;
}
