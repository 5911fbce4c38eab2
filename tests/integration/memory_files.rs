//! Large memory-tier bodies kept in sealed memory files (`cache.memory_sendfile_min`):
//! hits on cleartext HTTP/1 are sent from the file with sendfile, every other connection
//! reads the same bytes, and a body already handed to a socket stays as it was however the
//! cache changes afterwards.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, get, post, start_admin, Fixture, Origin, Proxy};

/// `len` bytes of a pattern that repeats every 251 bytes, starting `shift` bytes in.
fn pattern(len: usize, shift: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| ((i + shift) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn stored(body: &Bytes) -> Fixture {
    Fixture::Static {
        status: StatusCode::OK,
        headers: vec![("cache-control", "max-age=3600".into())],
        body: body.clone(),
    }
}

/// A slow client: sends `GET path` on a connection of its own (closed after the response)
/// and reads only until the head has arrived; returns the connection and what it read.
async fn get_head_only(addr: std::net::SocketAddr, path: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = vec![0u8; 64 << 10];
    let mut read = 0;
    while !raw[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut raw[read..]).await.unwrap();
        assert!(n > 0, "closed before the head");
        read += n;
    }
    raw.truncate(read);
    (stream, raw)
}

/// The slow client of [`get_head_only`] reads the rest: the body of its 200 response.
async fn read_rest(mut stream: tokio::net::TcpStream, mut raw: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(support::PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the rest within patience")
        .unwrap();
    let mut responses = support::split_responses(&raw, &[false]);
    assert_eq!(responses[0].0, "HTTP/1.1 200 OK");
    responses.swap_remove(0).1
}

/// Requests `path` until a hit is sent from its memory file (the fill stores the body
/// just after its last byte has gone to the client); each response must be `body`.
async fn until_sent_from_memory_file(proxy: &Proxy, path: &str, body: &Bytes) {
    let url = proxy.url(path);
    support::until_hit_counted(
        proxy,
        (&url, &[]),
        body,
        "a hit sent from its memory file",
        |metrics| metrics.memory_sendfile_responses.get(),
    )
    .await;
}

/// RFC 9111 §4 hits of a large body stored in memory go out from its sealed file on a
/// keep-alive connection, between other responses and after a HEAD (whose body is never
/// sent): whole, as one range (RFC 9110 §14.2), and after a small heap-held response, each
/// with exactly its own bytes. HTTP/2 reads the same body without sendfile.
#[tokio::test]
async fn large_memory_hits_are_sent_from_sealed_files_byte_for_byte() {
    let body = pattern(300 << 10, 0);
    let origin = Origin::start(vec![
        ("/large", stored(&body)),
        (
            "/small",
            Fixture::with_headers(200, &[("cache-control", "max-age=3600")], "small"),
        ),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let metrics = Arc::clone(proxy.outpost.proxy().metrics());
    until_sent_from_memory_file(&proxy, "/large", &body).await;
    assert!(get(&proxy.url("/small"), &[]).await.body == "small");
    let sent_before = metrics.memory_sendfile_responses.get();

    // The host the other requests name, so these are the same resources.
    let host = proxy.addr.to_string();
    let responses = support::large_between_others(proxy.addr, &host, "/large", "/small").await;
    assert!(responses[0].1 == body);
    assert!(responses[1].1.is_empty());
    assert_eq!(responses[2].1, b"small");
    assert!(responses[3].1 == body[1000..71000]);
    assert!(responses[4].1 == body);
    assert_eq!(metrics.memory_sendfile_responses.get() - sent_before, 3);
    assert_eq!(origin.hits("/large"), 1);

    // HTTP/2 (its own key: one more fetch) is given slices of the same sealed body.
    for _ in 0..2 {
        let request = http::Request::get(proxy.url("/large"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let over_h2 = support::send(&support::h2c_client(), request).await;
        assert_eq!(over_h2.version, http::Version::HTTP_2);
        assert!(over_h2.body == body);
    }
    assert_eq!(metrics.memory_sendfile_responses.get() - sent_before, 3);
}

/// A body the socket has not finished sending when its entry is purged and other large
/// bodies are stored after it still arrives exactly as stored: the response holds its
/// sealed file until the last byte is handed to the socket, and the pages the socket still
/// holds after that belong to a file nobody can write.
#[tokio::test]
async fn a_body_in_flight_is_unchanged_when_its_entry_goes() {
    let body = pattern(4 << 20, 0);
    let mut routes = vec![("/large", stored(&body))];
    let others: Vec<(String, Bytes)> = (1..=4)
        .map(|i| (format!("/other{i}"), pattern(4 << 20, i * 7)))
        .collect();
    for (path, other) in &others {
        routes.push((path.as_str(), stored(other)));
    }
    let origin = Origin::start(routes).await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let admin = start_admin(&proxy).await;
    until_sent_from_memory_file(&proxy, "/large", &body).await;
    let sent_before = proxy
        .outpost
        .proxy()
        .metrics()
        .memory_sendfile_responses
        .get();

    // A hit read slowly: only its head and first bytes before the entry goes.
    let (stream, raw) = get_head_only(proxy.addr, "/large").await;
    assert_eq!(
        proxy
            .outpost
            .proxy()
            .metrics()
            .memory_sendfile_responses
            .get()
            - sent_before,
        1
    );

    let purged = post(&format!("{admin}/purge?url={}", proxy.url("/large"))).await;
    assert_eq!(purged.status, StatusCode::OK);
    for (path, other) in &others {
        assert!(get(&proxy.url(path), &[]).await.body == *other);
    }

    let rest = read_rest(stream, raw).await;
    assert!(rest == body, "the body changed in flight");
    // It was purged: the next request goes to the origin again.
    assert!(get(&proxy.url("/large"), &[]).await.body == body);
    assert_eq!(origin.hits("/large"), 2);
}

/// `cache.memory_sendfile_min = 0` keeps every body on the heap: hits are the same bytes,
/// none is sent from a memory file.
#[tokio::test]
async fn a_zero_threshold_keeps_bodies_on_the_heap() {
    let body = pattern(300 << 10, 3);
    let origin = Origin::start(vec![("/large", stored(&body))]).await;
    let proxy = Proxy::start(&origin.url(), "[cache]\nmemory_sendfile_min = \"0\"").await;
    for _ in 0..3 {
        assert!(get(&proxy.url("/large"), &[]).await.body == body);
    }
    let metrics = Arc::clone(proxy.outpost.proxy().metrics());
    assert_eq!(metrics.memory_sendfile_responses.get(), 0);
    assert_eq!(origin.hits("/large"), 1);
}

/// A client still reading a response whose fill has been stored reads on from the stored
/// body, and the fill's own copy is let go: memory holds the body once, not once more per
/// slow client (RFC 9111 §3 stores the response; the client's bytes are unchanged). Both
/// a body sealed in a memory file and one kept on the heap, and a body far larger than
/// the sockets between the client and outpost can hold, so the handover is mid-body.
#[tokio::test]
async fn a_slow_client_reads_on_from_the_stored_body_and_the_fill_lets_go() {
    let body = pattern(24 << 20, 5);
    for config in ["", "[cache]\nmemory_sendfile_min = \"0\""] {
        let origin = Origin::start(vec![("/large", stored(&body))]).await;
        let proxy = Proxy::start(&origin.url(), config).await;
        let metrics = Arc::clone(proxy.outpost.proxy().metrics());

        // The slow client: its head, then nothing read until the body is stored.
        let (stream, raw) = get_head_only(proxy.addr, "/large").await;

        // Another client joins the fill, gets the whole body, and leaves it stored; then
        // the fill holds no bytes although the slow client has most of the body to read.
        assert!(get(&proxy.url("/large"), &[]).await.body == body);
        support::eventually_some("the fill's bytes let go", || async {
            (metrics.fill_bytes.get() == 0).then_some(())
        })
        .await;

        let rest = read_rest(stream, raw).await;
        assert!(rest == body, "the slow client's body differs ({config:?})");
        assert_eq!(origin.hits("/large"), 1);
    }
}

/// Bytes of pages held by each of this process's memory files that are exactly `len` bytes
/// long (a body being written into its file is sized to its declared length up front).
/// Tests share the process, so each test picks a length no other test uses.
fn memory_files_of_len(len: u64) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut files = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let path = entry.path();
        let is_memory_file = std::fs::read_link(&path)
            .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:"));
        if !is_memory_file {
            continue;
        }
        // A descriptor closed since the listing is skipped.
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.len() == len {
                // By inode: a file with several descriptors counts once.
                files.insert(meta.ino(), meta.blocks() * 512);
            }
        }
    }
    files.into_values().collect()
}

/// A body the cache will seal is written into its memory file as it arrives, not kept on
/// the heap and copied into a file at the end: while the origin holds back the second half,
/// the process has a memory file of the declared length holding the first half. A client
/// joining then reads the whole body, the complete body is sealed in that same file, and
/// hits (RFC 9111 §4) are sent from it.
#[tokio::test]
async fn a_body_is_written_into_its_memory_file_as_it_arrives() {
    const LEN: usize = 1_234_567;
    let body = pattern(LEN, 9);
    let gate = support::Gate::closed();
    let origin = Origin::start(vec![(
        "/growing",
        Fixture::Halves {
            headers: support::header_list(&[("cache-control", "max-age=3600")]),
            first: body.slice(..600_000),
            gate: gate.clone(),
            rest: body.slice(600_000..),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let first = tokio::spawn({
        let url = proxy.url("/growing");
        async move { get(&url, &[]).await }
    });
    let held = support::eventually_some("the first half in a memory file", || async {
        memory_files_of_len(LEN as u64)
            .into_iter()
            .find(|&held| held >= 600_000)
    })
    .await;
    assert!(held < LEN as u64, "the second half is not there yet");

    // Joins the fill while the origin waits: its head comes from the fill in flight.
    let (late, raw) = get_head_only(proxy.addr, "/growing").await;
    gate.open();
    assert!(
        first.await.unwrap().body == body,
        "the first client's body differs"
    );
    assert!(
        read_rest(late, raw).await == body,
        "the late client's body differs"
    );
    until_sent_from_memory_file(&proxy, "/growing", &body).await;
    assert_eq!(origin.hits("/growing"), 1);
    assert_eq!(
        memory_files_of_len(LEN as u64).len(),
        1,
        "the file stored is the one written"
    );
}

/// RFC 9112 §6.3: an origin that breaks off a body being written into its memory file
/// fails its client's response (never a clean end), and the file goes with the fill:
/// nothing is stored, and the next request goes to the origin.
#[tokio::test]
async fn a_body_broken_off_leaves_no_memory_file() {
    const LEN: usize = 1_234_577;
    let gate = support::Gate::closed();
    let origin = Origin::start(vec![(
        "/breaks",
        Fixture::FailsAfter {
            headers: support::header_list(&[("cache-control", "max-age=3600")]),
            first: pattern(400_000, 1),
            declared: LEN,
            gate: gate.clone(),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "").await;
    let first = tokio::spawn({
        let url = proxy.url("/breaks");
        async move { support::get_body_or_break(&url).await }
    });
    support::eventually("the first part in a memory file", || {
        memory_files_of_len(LEN as u64)
            .iter()
            .any(|&held| held >= 400_000)
    })
    .await;
    gate.open();
    assert!(
        first.await.unwrap().is_err(),
        "a broken body must not end cleanly"
    );
    support::eventually("the memory file to go", || {
        memory_files_of_len(LEN as u64).is_empty()
    })
    .await;
    let _ = support::get_body_or_break(&proxy.url("/breaks")).await;
    // At least once more (a connection broken before the head may be retried).
    assert!(origin.hits("/breaks") >= 2, "nothing was stored");
}
