//! The memory tier's default replacement (issue 17 item 2), seen from outside: a real
//! outpost with a small memory tier and no disk, a real origin, a real client. A scan of
//! one-hit objects does not push out the hot set, and a popular large object gets in among
//! small one-hit objects. Requests carry a fixed Host so the cache keys, and with them the
//! policy's decisions, are the same on every run.

use crate::support;

use support::*;

const TIER: &str = "[cache]\nmemory_capacity = \"1MiB\"\nmax_object_size = \"512KiB\"\n";

async fn request(proxy: &Proxy, path: &str) -> Reply {
    get(&proxy.url(path), &[("host", "policy.test")]).await
}

fn storable(size: usize) -> Fixture {
    Fixture::with_headers(200, &[("cache-control", "max-age=3600")], &"x".repeat(size))
}

/// After a scan of one-hit objects twice the tier's size, every object of the hot set is
/// still answered from memory, with no origin fetch.
#[tokio::test]
async fn a_scan_twice_the_tier_leaves_the_hot_set_in_memory() {
    let origin = Origin::start(vec![("/hot", storable(4096)), ("/cold", storable(4096))]).await;
    let proxy = Proxy::start(&origin.url(), TIER).await;
    for _ in 0..4 {
        for n in 0..32 {
            request(&proxy, &format!("/hot?n={n}")).await;
        }
    }
    let hot_fetches = origin.hits("/hot");
    assert_eq!(hot_fetches, 32, "each hot object fetched once");
    // 2 MiB of objects asked for once each.
    for n in 0..512 {
        request(&proxy, &format!("/cold?n={n}")).await;
    }
    for n in 0..32 {
        let reply = request(&proxy, &format!("/hot?n={n}")).await;
        assert!(is_hit(&reply), "/hot?n={n}: {}", cache_status(&reply));
    }
    assert_eq!(
        origin.hits("/hot"),
        hot_fetches,
        "no hot object went back to the origin"
    );
}

/// A 100 KiB object asked for again and again is admitted into a tier full of 1 KiB
/// objects asked for once, and then answered from memory.
#[tokio::test]
async fn a_popular_large_object_gets_in_among_one_hit_small_ones() {
    let origin = Origin::start(vec![
        ("/big", storable(100 << 10)),
        ("/small", storable(1024)),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), TIER).await;
    for n in 0..2048 {
        request(&proxy, &format!("/small?n={n}")).await;
    }
    let mut hits = 0;
    for _ in 0..10 {
        if is_hit(&request(&proxy, "/big").await) {
            hits += 1;
        }
    }
    assert!(
        hits >= 7,
        "the large object answered from memory {hits} times of 10"
    );
    assert!(origin.hits("/big") <= 3);
}

/// A large object asked for again, but still colder than the objects it would have to
/// displace in a full tier, is streamed through rather than stored: stored, it would lose
/// its first contest and leave at once (RFC 9211 §2.7 `stored` would be false). Once
/// asked for often enough it still gets in.
#[tokio::test]
async fn a_large_object_that_would_not_win_its_room_is_not_stored() {
    let origin = Origin::start(vec![
        ("/big", storable(100 << 10)),
        ("/warm", storable(1024)),
    ])
    .await;
    let proxy = Proxy::start(&origin.url(), TIER).await;
    // More warm objects than the tier holds, each asked for three times: it is full of them.
    for _ in 0..3 {
        for n in 0..800 {
            request(&proxy, &format!("/warm?n={n}")).await;
        }
    }
    for asked in 1..=2 {
        let reply = request(&proxy, "/big").await;
        let status = cache_status(&reply);
        assert!(!is_hit(&reply), "request {asked}: {status}");
        assert!(!status.contains("stored"), "request {asked}: {status}");
    }
    let mut hits = 0;
    for _ in 0..20 {
        if is_hit(&request(&proxy, "/big").await) {
            hits += 1;
        }
    }
    assert!(hits >= 10, "answered from memory {hits} times of 20 more");
}

/// An object the disk tier has but the memory tier's policy will not keep (colder than
/// everything in memory) is still answered from disk, not fetched again.
#[tokio::test]
async fn a_disk_hit_refused_by_memory_is_still_a_hit() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(vec![("/hot", storable(4096)), ("/cold", storable(4096))]).await;
    let config = format!(
        "[cache]\nmemory_capacity = \"32KiB\"\nmax_object_size = \"16KiB\"\ndir = \"{}\"\n",
        dir.path().display()
    );
    let proxy = Proxy::start(&origin.url(), &config).await;
    // More hot objects than the tier holds: memory is full of objects asked for ten times.
    for _ in 0..10 {
        for n in 0..8 {
            request(&proxy, &format!("/hot?n={n}")).await;
        }
    }
    for _ in 0..2 {
        request(&proxy, "/cold").await;
        proxy.outpost.proxy().cache().settle().await;
    }
    let reply = request(&proxy, "/cold").await;
    assert!(is_hit(&reply), "{}", cache_status(&reply));
    assert_eq!(
        origin.hits("/cold"),
        1,
        "stored once, then answered from disk"
    );
}

/// Requests of a skewed trace (deterministic): object ids 100000..100800 (all the same
/// length, so every object weighs the same in the tier), the most popular first.
fn skewed_trace(requests: usize) -> Vec<u32> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..requests)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let uniform = (state >> 11) as f64 / (1u64 << 53) as f64;
            100_000 + (800.0 * uniform.powi(3)) as u32
        })
        .collect()
}

/// The live tier decides as `outpost replay` models it (issue 17 item 2): the same trace,
/// request by request through a real outpost and through `outpost replay --policy
/// wtinylfu` with each object's size as the tier weighs it, gives the same hits, but for
/// the frequency sketch's collisions: the live tier hashes cache keys, replay the trace's
/// ids, so a few estimates differ (3 hits of 6,000 here). Each request counts once for
/// the policy, a miss too; when a miss counted twice (the lookup, and the re-check for a
/// fill that settled meanwhile) the live tier had 41 hits fewer.
#[tokio::test]
async fn the_live_tier_hits_exactly_where_replay_says() {
    let origin = Origin::start(vec![("/obj", storable(1024))]).await;
    let tier = "[log]\naccess_log = false\n[cache]\nmemory_capacity = \"256KiB\"\nmax_object_size = \"16KiB\"\n";
    // What one object weighs in the tier, from a tier of its own.
    let probe = Proxy::start(&origin.url(), tier).await;
    request(&probe, "/obj?k=100000").await;
    probe.outpost.proxy().cache().settle().await;
    let weight = probe.outpost.proxy().cache().memory_held_bytes().unwrap();

    let trace = skewed_trace(6000);
    let proxy = Proxy::start(&origin.url(), tier).await;
    let mut live_hits: u64 = 0;
    for id in &trace {
        if is_hit(&request(&proxy, &format!("/obj?k={id}")).await) {
            live_hits += 1;
        }
        // Stored before the next request, as replay stores it.
        proxy.outpost.proxy().cache().settle().await;
    }

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("trace.csv");
    let mut text = String::from("time,obj_id,size\n");
    for (time, id) in trace.iter().enumerate() {
        text.push_str(&format!("{time},{id},{weight}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let csv = csv.to_str().unwrap();
    // The tier holds the capacity less the fills' budget (an eighth; no process reserve is
    // taken from a capacity this small): that is its size.
    let tier_size = proxy
        .outpost
        .proxy()
        .cache()
        .memory_capacity_now()
        .to_string();
    assert_eq!(tier_size, (224 << 10).to_string());
    let report = crate::replay::replay_json(&["--policy", "wtinylfu", "--sizes", &tier_size, csv]);
    let replay_hits = report["results"][0]["hits"].as_u64().unwrap();
    assert!(live_hits > 1000, "a trace with hits: {live_hits}");
    assert!(
        live_hits.abs_diff(replay_hits) <= 10,
        "live {live_hits} hits, replay {replay_hits}"
    );
}
