//! PROXY protocol v1 and v2 in (issue 14 item 4): from a configured balancer the header's
//! client address is the client outpost forwards for; from anyone else it is not believed.

use crate::support;

use support::*;

async fn proxy_trusting(origin: &Origin, trusted: &str) -> Proxy {
    let toml = format!("[server]\nproxy_protocol_from = [\"{trusted}\"]\n");
    Proxy::start(&origin.url(), &toml).await
}

const REQUEST: &[u8] = b"GET /p HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n";

fn with_header(header: &[u8]) -> Vec<u8> {
    [header, REQUEST].concat()
}

/// v2: the signature, PROXY over TCP/IPv4 (or IPv6), the address block.
fn v2_header(source: std::net::IpAddr, port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    let mut block = Vec::new();
    match source {
        std::net::IpAddr::V4(v4) => {
            header.push(0x11);
            block.extend_from_slice(&v4.octets());
            block.extend_from_slice(&[10, 0, 0, 1]);
        }
        std::net::IpAddr::V6(v6) => {
            header.push(0x21);
            block.extend_from_slice(&v6.octets());
            block.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    }
    block.extend_from_slice(&port.to_be_bytes());
    block.extend_from_slice(&80u16.to_be_bytes());
    header.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&block);
    header
}

/// From a trusted balancer, v1 and v2 headers name the client: it is the one forwarding
/// headers speak for. Without a header the balancer is the client.
#[tokio::test]
async fn a_trusted_balancer_names_the_client_in_v1_and_v2() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let proxy = proxy_trusting(&origin, "127.0.0.1/32").await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            with_header(b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n"),
            "203.0.113.7",
        ),
        (
            with_header(&v2_header("198.51.100.9".parse().unwrap(), 4711)),
            "198.51.100.9",
        ),
        (
            with_header(&v2_header("2001:db8::5".parse().unwrap(), 4711)),
            "2001:db8::5",
        ),
        (REQUEST.to_vec(), "127.0.0.1"),
    ];
    for (bytes, client) in cases {
        let answer = raw_exchange(proxy.addr, &bytes).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{client}: {answer}");
        assert_eq!(origin.last("/p").headers["x-forwarded-for"], client);
    }
}

/// A PROXY header from a peer not in `server.proxy_protocol_from` is not believed: the
/// connection does not speak HTTP, and nothing reaches the origin in the named client's
/// name.
#[tokio::test]
async fn an_untrusted_peer_cannot_claim_another_address() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let proxy = proxy_trusting(&origin, "10.0.0.0/8").await;
    let spoofed = with_header(b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n");
    let answer = raw_exchange(proxy.addr, &spoofed).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(origin.seen().iter().all(|seen| seen
        .headers
        .get("x-forwarded-for")
        .is_none_or(|v| v != "203.0.113.7")));
}

/// A malformed header from a trusted balancer closes the connection without a request.
#[tokio::test]
async fn a_malformed_header_closes_the_connection() {
    let origin = Origin::start(vec![("/p", fixed(&[("cache-control", "no-store")], "ok"))]).await;
    let proxy = proxy_trusting(&origin, "127.0.0.1/32").await;
    let answer = raw_exchange(proxy.addr, &with_header(b"PROXY TCP4 not-an-address\r\n")).await;
    assert_eq!(answer, "");
    assert_eq!(origin.hits("/p"), 0);
}

/// A response that varies on X-Forwarded-For (or X-Real-IP, Forwarded) varies on the client
/// address outpost itself writes there: it is never served to another client (RFC 9111
/// §4.1 cannot match it from a client's request), as two clients behind the balancer show.
#[tokio::test]
async fn a_response_varying_on_the_forwarded_client_address_goes_to_no_other_client() {
    let origin = Origin::start(vec![(
        "/p",
        Fixture::Echo {
            name: "x-forwarded-for",
            headers: header_list(&[
                ("cache-control", "max-age=600"),
                ("vary", "X-Forwarded-For"),
            ]),
        },
    )])
    .await;
    let proxy = proxy_trusting(&origin, "127.0.0.0/8").await;
    for client in ["192.0.2.1", "198.51.100.2"] {
        let header = format!("PROXY TCP4 {client} 10.0.0.1 4000 80\r\n");
        let reply = raw_exchange(proxy.addr, &with_header(header.as_bytes())).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with(client), "{client} got: {reply}");
    }
    assert_eq!(origin.hits("/p"), 2);
}
