//! Crash safety of the disk tier: the real binary is killed with SIGKILL while it writes
//! objects, restarted on the same cache directory with the origin gone, and must serve
//! every object it answers from cache complete and correct (never a partial or foreign
//! body), keep what it had durably stored, and sweep what the crash left behind.

use crate::support;

use std::net::TcpListener as StdListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::{get, Fixture, Origin, Reaped};

const FIRST_WAVE: usize = 40;
const SECOND_WAVE: usize = 60;
/// Stored once the first wave is on disk (see its use).
const SENTINEL: &str = "/sentinel";

/// A body unique to `index`, large enough (for odd indexes) to stream to disk.
fn body_of(index: usize) -> Bytes {
    let len = if index % 2 == 0 { 2_000 } else { 300_000 };
    Bytes::from(
        (0..len)
            .map(|i| ((i * 7 + index * 13) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_outpost(dir: &std::path::Path, origin: &str, port: u16, admin: u16) -> Reaped {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        "[log]\naccess_log = false\n[cache]\nmax_object_size = \"64KiB\"\nfsync = true\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTPOST_") {
            command.env_remove(key);
        }
    }
    command
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--origin", origin])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("outpost starts")
}

async fn wait_ready(admin: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = tokio::net::TcpStream::connect(("127.0.0.1", admin))
            .await
            .is_ok();
        if ready
            && get(&format!("http://127.0.0.1:{admin}/readyz"), &[])
                .await
                .status
                == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outpost never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn disk_entries(admin: u16) -> u64 {
    let status = get(&format!("http://127.0.0.1:{admin}/status.json"), &[]).await;
    let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    json["tiers"]["disk"]["entries"].as_u64().unwrap_or(0)
}

/// Waits until the disk tier has indexed `count` rows.
async fn wait_for_disk_entries(admin: u16, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while disk_entries(admin).await < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} rows reached disk",
            disk_entries(admin).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILL, no clean-up of any kind. Until it is waited for, the dead process keeps its
/// pid (a zombie), so sending it twice is harmless.
fn kill_9(pid: u32) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -9 {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Tries a request that may fail (the server is being killed).
async fn try_get(url: String) -> Option<(StatusCode, Bytes)> {
    use http_body_util::{BodyExt, Full};
    let request = hyper::Request::get(url)
        .header("host", "crash.test")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = support::client().request(request).await.ok()?;
    let status = response.status();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_writes_then_restart_serves_no_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = (0..FIRST_WAVE + SECOND_WAVE)
        .map(|i| format!("/obj/{i}"))
        .collect();
    let routes = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            (
                path.as_str(),
                Fixture::Static {
                    status: StatusCode::OK,
                    headers: vec![("cache-control", "max-age=3600".to_string())],
                    body: body_of(i),
                },
            )
        })
        .chain(std::iter::once((
            SENTINEL,
            Fixture::Static {
                status: StatusCode::OK,
                headers: vec![("cache-control", "max-age=3600".to_string())],
                body: Bytes::from_static(b"stored after the first wave"),
            },
        )))
        .collect();
    let origin = Origin::start(routes).await;
    let (port, admin) = (free_port(), free_port());
    let mut child = spawn_outpost(dir.path(), &origin.url(), port, admin);
    wait_ready(admin).await;

    // First wave: stored and durable (fsync = true) before the crash.
    for path in &paths[..FIRST_WAVE] {
        let (status, body) = try_get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .expect("first wave answered");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body.len(),
            body_of(paths.iter().position(|p| p == path).unwrap()).len()
        );
    }
    wait_for_disk_entries(admin, FIRST_WAVE as u64).await;
    // A row counts as soon as it is indexed, and with `fsync` its flush follows under the
    // store's lock. One more row, stored once the first wave's count is in, can only be
    // indexed after the last of them was flushed.
    let (status, _) = try_get(format!("http://127.0.0.1:{port}{SENTINEL}"))
        .await
        .expect("sentinel answered");
    assert_eq!(status, StatusCode::OK);
    wait_for_disk_entries(admin, FIRST_WAVE as u64 + 1).await;

    // Second wave in flight, all at once; the process dies once a few have answered.
    let mut wave = tokio::task::JoinSet::new();
    for path in &paths[FIRST_WAVE..] {
        wave.spawn(try_get(format!("http://127.0.0.1:{port}{path}")));
    }
    let mut answered = 0;
    while let Some(result) = wave.join_next().await {
        if result.ok().flatten().is_some() {
            answered += 1;
        }
        if answered == 5 {
            kill_9(child.id());
        }
    }
    kill_9(child.id());
    let _ = child.wait();

    // Restart with the origin gone: everything comes from the crashed cache or fails.
    drop(origin);
    let dead_origin = format!("http://{}", support::closed_port().await);
    let (port, admin) = (free_port(), free_port());
    let mut child = spawn_outpost(dir.path(), &dead_origin, port, admin);
    wait_ready(admin).await;
    let mut hits = 0;
    for (index, path) in paths.iter().enumerate() {
        let (status, body) = try_get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .expect("restarted outpost answers");
        if status == StatusCode::OK {
            assert!(
                body == body_of(index),
                "{path}: served bytes differ from the origin's"
            );
            hits += 1;
        } else {
            assert!(status.is_server_error(), "{path}: {status}");
            assert!(
                index >= FIRST_WAVE,
                "{path} was durably stored before the crash"
            );
        }
    }
    assert!(
        hits >= FIRST_WAVE,
        "every first-wave object survives: {hits}"
    );
    // The sweep removes what the crash left in tmp/.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(dir.path().join("cache/tmp"))
        .unwrap()
        .count()
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "temp files never swept"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill_9(child.id());
    let _ = child.wait();
}

/// A purge is durable once answered: SIGKILL right after it, a restart on the same
/// directory with the origin gone, and the purged object is not served from disk while
/// the one beside it is. Before, the removal waited up to 200 ms for the index's next
/// flush, and a crash in that time brought purged content back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_survives_a_kill_9_right_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![
        ("/purged", Fixture::for_an_hour("purged")),
        ("/kept", Fixture::for_an_hour("kept")),
    ])
    .await;
    let (port, admin) = (free_port(), free_port());
    let mut child = spawn_outpost(dir.path(), &origin.url(), port, admin);
    wait_ready(admin).await;
    for path in ["/purged", "/kept"] {
        let (status, _) = try_get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .expect("served");
        assert_eq!(status, StatusCode::OK);
    }
    wait_for_disk_entries(admin, 2).await;
    let purge = support::post(&format!(
        "http://127.0.0.1:{admin}/purge?url=http://crash.test/purged"
    ))
    .await;
    assert!(purge.text().contains("\"purged\":1"), "{}", purge.text());
    kill_9(child.id());
    let _ = child.wait();

    let dead_origin = format!("http://{}", support::closed_port().await);
    let mut child = spawn_outpost(dir.path(), &dead_origin, port, admin);
    wait_ready(admin).await;
    let kept = try_get(format!("http://127.0.0.1:{port}/kept")).await;
    assert_eq!(kept, Some((StatusCode::OK, Bytes::from_static(b"kept"))));
    let purged = try_get(format!("http://127.0.0.1:{port}/purged"))
        .await
        .expect("answered");
    assert_ne!(purged.0, StatusCode::OK, "purged content came back");
    kill_9(child.id());
    let _ = child.wait();
}

async fn disk_degraded(admin: u16) -> bool {
    let status = get(&format!("http://127.0.0.1:{admin}/status.json"), &[]).await;
    let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    json["tiers"]["disk"]["degraded"] == serde_json::Value::Bool(true)
}

/// Purges made while the disk tier is off (its `tmp/` made unusable, as a failing disk
/// would) are written down in the cache dir: SIGKILL while the tier is still off, a
/// restart on the same directory with the disk working again and the origin gone, and
/// neither the object purged by URL nor the one purged by prefix is served from disk,
/// while the one beside them is. Before, they lived in memory alone and the crash lost
/// them: purged content served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_missed_while_the_disk_tier_is_off_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![
        ("/purged", Fixture::for_an_hour("purged")),
        ("/tree/leaf", Fixture::for_an_hour("leaf")),
        ("/kept", Fixture::for_an_hour("kept")),
        (
            // Large enough to be written through `tmp/` (small bodies go in the index).
            "/while-off",
            Fixture::Static {
                status: StatusCode::OK,
                headers: vec![("cache-control", "max-age=3600".to_string())],
                body: body_of(1),
            },
        ),
    ])
    .await;
    let (port, admin) = (free_port(), free_port());
    let mut child = spawn_outpost(dir.path(), &origin.url(), port, admin);
    wait_ready(admin).await;
    for path in ["/purged", "/tree/leaf", "/kept"] {
        let (status, _) = try_get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .expect("served");
        assert_eq!(status, StatusCode::OK);
    }
    wait_for_disk_entries(admin, 3).await;
    let tmp = dir.path().join("cache").join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, "not a directory").unwrap();
    try_get(format!("http://127.0.0.1:{port}/while-off")).await;
    support::eventually_some("the disk tier to go off", || async {
        disk_degraded(admin).await.then_some(())
    })
    .await;
    for purge in [
        "url=http://crash.test/purged",
        "prefix=http://crash.test/tree/",
    ] {
        let purged = support::post(&format!("http://127.0.0.1:{admin}/purge?{purge}")).await;
        assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    }
    kill_9(child.id());
    let _ = child.wait();

    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    let dead_origin = format!("http://{}", support::closed_port().await);
    let mut child = spawn_outpost(dir.path(), &dead_origin, port, admin);
    wait_ready(admin).await;
    let kept = try_get(format!("http://127.0.0.1:{port}/kept")).await;
    assert_eq!(kept, Some((StatusCode::OK, Bytes::from_static(b"kept"))));
    for path in ["/purged", "/tree/leaf"] {
        let purged = try_get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .expect("answered");
        assert_ne!(purged.0, StatusCode::OK, "{path}: purged content came back");
    }
    assert!(!disk_degraded(admin).await, "the tier is in use again");
    kill_9(child.id());
    let _ = child.wait();
}
