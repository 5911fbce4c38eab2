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
