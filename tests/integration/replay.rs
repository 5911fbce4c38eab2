//! `outpost replay` and `outpost load` as scripts use them: every trace format in
//! testdata/traces parses, results are deterministic, a hand-computable trace gives the
//! exact LRU hit ratio, and the JSON carries what the issue promises.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Fixture, Origin, Proxy};

fn outpost(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTPOST_") {
            command.env_remove(key);
        }
    }
    command.args(args).output().expect("outpost runs")
}

fn traces(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/traces/").to_string() + name
}

/// `outpost replay --quiet --json F` with `args`: the report, after a successful run.
pub(crate) fn replay_json(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let json_arg = json.to_str().unwrap();
    let mut all = vec!["replay", "--quiet", "--json", json_arg];
    all.extend_from_slice(args);
    let output = outpost(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// The same 3000-request workload as CSV, oracleGeneral and zstd oracleGeneral gives the
/// same summary and the same hit ratios.
#[test]
fn every_trace_format_parses_to_the_same_workload() {
    let sizes = ["--sizes", "0.05,0.2,1MiB", "--policy", "lru,tinylfu"];
    let mut outcomes = Vec::new();
    for (file, format) in [
        ("zipf.csv", "csv"),
        ("zipf.oracleGeneral.bin", "oracle"),
        ("zipf.oracleGeneral.bin.zst", "oracle"),
    ] {
        let path = traces(file);
        let mut args = vec![path.as_str(), "--format", format];
        args.extend_from_slice(&sizes);
        let json = replay_json(&args);
        assert_eq!(json["summary"]["requests"], 3000, "{file}");
        outcomes.push((json["summary"].clone(), json["results"].clone()));
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
    // Plain CSV (obj_id,size, no header) has the same requests.
    let plain = replay_json(&[traces("plain.csv").as_str(), "--sizes", "0.05,0.2,1MiB"]);
    assert_eq!(plain["summary"], outcomes[0].0);
    // Access logs: GET/HEAD with 2xx/3xx only; the 304s take the object's size.
    let log = replay_json(&[
        traces("access.log").as_str(),
        "--format",
        "clf",
        "--sizes",
        "0.5",
    ]);
    let requests = log["summary"]["requests"].as_u64().unwrap();
    assert!(requests > 2000 && requests < 2500, "{requests}");
    assert!(log["results"][0]["hit_ratio"].as_f64().unwrap() > 0.5);
}

/// A B A C B A with room for two objects of size 1: only the third request hits (1/6);
/// with room for three, the last three of the six hit.
#[test]
fn a_hand_computed_trace_gives_the_exact_lru_hit_ratio() {
    let json = replay_json(&[
        traces("tiny.csv").as_str(),
        "--policy",
        "lru",
        "--sizes",
        "2,3",
    ]);
    let results = json["results"].as_array().unwrap();
    assert_eq!(results[0]["policy"], "lru");
    assert_eq!(results[0]["size_bytes"], 2);
    assert_eq!(results[0]["requests"], 6);
    assert_eq!(results[0]["hits"], 1);
    assert!((results[0]["hit_ratio"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-12);
    assert_eq!(results[1]["hits"], 3);
    assert!((results[1]["byte_hit_ratio"].as_f64().unwrap() - 0.5).abs() < 1e-12);
}

/// Synthetic workloads are the same for a seed (and differ for another), and sweep
/// results are identical from run to run whatever the thread scheduling.
#[test]
fn replay_results_are_deterministic_for_a_seed() {
    let spec = "zipf:alpha=0.9,objects=2000,requests=20000,seed=5,size=100-5000";
    let args = [
        "--synthetic",
        spec,
        "--policy",
        "lru,tinylfu",
        "--sizes",
        "0.01,0.1,0.5",
        "--warmup",
        "1000",
    ];
    let first = replay_json(&args);
    let second = replay_json(&args);
    assert_eq!(first, second);
    assert_eq!(first["results"].as_array().unwrap().len(), 6);
    assert_eq!(
        first["results"][0]["requests"], 19_000,
        "warm-up not counted"
    );
    let other = replay_json(&[
        "--synthetic",
        "zipf:alpha=0.9,objects=2000,requests=20000,seed=6,size=100-5000",
        "--sizes",
        "0.1",
    ]);
    assert_ne!(other["results"][0]["hits"], first["results"][1]["hits"]);
    // Bigger caches never do worse under LRU (the inclusion property).
    let lru: Vec<f64> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["policy"] == "lru")
        .map(|r| r["hit_ratio"].as_f64().unwrap())
        .collect();
    assert!(lru.windows(2).all(|w| w[0] <= w[1]), "{lru:?}");
}

/// CSV, SVG and a written trace, as files a person or a script can open.
#[test]
fn outputs_are_written_as_csv_svg_and_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let output = outpost(&[
        "replay",
        "--quiet",
        "--synthetic",
        "uniform:objects=100,requests=1000,seed=1,size=10",
        "--sizes",
        "0.1,0.5",
        "--disk",
        "1KiB",
        "--csv",
        &path("r.csv"),
        "--plot",
        &path("r.svg"),
        "--write-oracle",
        &path("t.oracleGeneral.bin"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("hit ratio"), "{table}");
    let csv = std::fs::read_to_string(path("r.csv")).unwrap();
    assert!(csv.starts_with("policy,size_bytes,"));
    assert_eq!(csv.lines().count(), 3);
    let svg = std::fs::read_to_string(path("r.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline") && svg.trim_end().ends_with("</svg>")
    );
    assert_eq!(
        std::fs::metadata(path("t.oracleGeneral.bin"))
            .unwrap()
            .len(),
        1000 * 24
    );
    // The written trace replays to the same numbers.
    let again = replay_json(&[
        &path("t.oracleGeneral.bin"),
        "--sizes",
        "0.1,0.5",
        "--disk",
        "1KiB",
    ]);
    assert!(csv.contains(&format!(",{},", again["results"][0]["hits"])));
}

#[test]
fn bad_traces_and_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.csv");
    std::fs::write(&broken, "time,obj_id,size\n1,2,3\n4,5,lots\n").unwrap();
    let output = outpost(&["replay", "--quiet", broken.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 3"));
    let output = outpost(&["replay", "--quiet", "--synthetic", "zipf:alpha=x"]);
    assert!(!output.status.success());
    let output = outpost(&[
        "replay",
        "--quiet",
        "--synthetic",
        "zipf",
        "--policy",
        "random",
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown policy"));
    assert!(!Path::new("nonexistent").exists());
    let output = outpost(&["replay", "--quiet", "nonexistent.csv"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("nonexistent.csv"));
}

/// `outpost load` against a real outpost: bounded by its request count, every request
/// answered, and the hit ratio read from Cache-Status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_throughput_latency_and_the_hit_ratio() {
    let paths: Vec<String> = (0..20).map(|i| format!("/obj/{i}")).collect();
    let origin = Origin::start(
        paths
            .iter()
            .map(|p| {
                (
                    p.as_str(),
                    Fixture::with_headers(200, &[("cache-control", "max-age=600")], "object"),
                )
            })
            .collect(),
    )
    .await;
    let proxy = Proxy::start(&origin.url(), "[log]\naccess_log = false\n").await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let url = proxy.url("/obj/");
    let json_arg = json.to_str().unwrap().to_string();
    let output = tokio::task::spawn_blocking(move || {
        outpost(&[
            "load",
            &url,
            "--keys",
            "20",
            "--requests",
            "400",
            "--duration",
            "60s",
            "-c",
            "4",
            "--quiet",
            "--json",
            &json_arg,
        ])
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["requests"], 400);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["statuses"]["200"], 400);
    let hits = report["hits"].as_u64().unwrap();
    let fills: usize = paths.iter().map(|p| origin.hits(p)).sum();
    // Misses are the origin's fills plus followers collapsed into them (not hits either).
    assert!(hits + fills as u64 <= 400, "{hits} hits, {fills} fills");
    assert!(hits >= 400 - 20 * 4, "{hits} hits of 400 over 20 keys");
    assert!(report["p99_ms"].as_f64().unwrap() > 0.0);
}

/// `outpost load --burst`, the coalescing probe, against a real outpost: N requests for one
/// cold URL released at once; the origin (held until the first fill reaches it) is asked
/// once, and the report counts one forwarded request, the rest collapsed into it or hits
/// (RFC 9211 Cache-Status `fwd`, `collapsed`, `hit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reports_one_forwarded_request_and_the_rest_collapsed() {
    let gate = support::Gate::closed();
    let origin = Origin::start(vec![(
        "/cold",
        Fixture::GatedWith {
            gate: gate.clone(),
            headers: support::cc("max-age=600"),
            body: bytes::Bytes::from(vec![b'b'; 4096]),
        },
    )])
    .await;
    let proxy = Proxy::start(&origin.url(), "[log]\naccess_log = false\n").await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("burst.json");
    let json_arg = json.to_str().unwrap().to_string();
    let url = proxy.url("/cold");
    let burst = tokio::task::spawn_blocking(move || {
        outpost(&[
            "load",
            &url,
            "--burst",
            "50",
            "--duration",
            "60s",
            "--json",
            &json_arg,
        ])
    });
    support::eventually("the fill to reach the origin", || origin.hits("/cold") > 0).await;
    gate.open();
    let output = burst.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["completed"], 50);
    assert_eq!(report["statuses"]["200"], 50);
    let (hits, forwarded, collapsed) = (
        report["hits"].as_u64().unwrap(),
        report["forwarded"].as_u64().unwrap(),
        report["collapsed"].as_u64().unwrap(),
    );
    assert_eq!(origin.hits("/cold"), 1);
    assert_eq!(forwarded - collapsed, 1, "one request led the fill");
    assert_eq!(hits + forwarded, 50);
    assert!(report["burst_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    let refused = outpost(&["load", "https://127.0.0.1:1/x", "--burst", "2"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an http:// URL"));
}

/// A load run that measures nothing says so: a URL `load` cannot speak to is refused up
/// front, and a run in which every request failed exits non-zero with the first failure.
#[test]
fn a_load_run_in_which_nothing_gets_through_fails_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x/");
    let refused = outpost(&["load", &url, "--requests", "20", "--quiet"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("every request failed") && said.contains("onnection refused"),
        "{said}"
    );
    for not_http in ["example.com/x/", "ftp://127.0.0.1/x/"] {
        let refused = outpost(&["load", not_http, "--requests", "1", "--quiet"]);
        assert!(!refused.status.success());
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            said.contains("the URL") && said.contains(not_http),
            "{said}"
        );
    }
}

/// The models against moka itself (the memory tier's engine): LRU agrees exactly, and so
/// does W-TinyLFU (the tier's default: moka stores, the tier's own policy decides); the
/// TinyLFU model follows moka's admission rule, and moka's own hashing is seeded at random,
/// so they agree within a few points.
#[test]
fn the_models_agree_with_moka_itself() {
    let trace = traces("zipf.csv");
    let args = |engine: &'static str| {
        vec![
            trace.clone(),
            "--policy".into(),
            "lru,tinylfu,wtinylfu".into(),
            "--sizes".into(),
            "0.05,0.2,0.5".into(),
            "--engine".into(),
            engine.to_string(),
        ]
    };
    let run = |engine| {
        let owned = args(engine);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        replay_json(&refs)
    };
    let (model, moka) = (run("model"), run("moka"));
    for (ours, theirs) in model["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(moka["results"].as_array().unwrap())
    {
        let (a, b) = (
            ours["hit_ratio"].as_f64().unwrap(),
            theirs["hit_ratio"].as_f64().unwrap(),
        );
        if ours["policy"] != "tinylfu" {
            assert_eq!(ours["hits"], theirs["hits"], "{ours} vs {theirs}");
        } else {
            assert!((a - b).abs() < 0.06, "tinylfu {a} vs moka {b}");
        }
    }
}

/// Freshness in the trace (a ttl per response) makes expired copies misses, in the models
/// and in moka alike; shorter freshness never raises the hit ratio.
#[test]
fn expiring_responses_are_misses_in_both_engines() {
    let run = |spec: &str, engine: &str| {
        replay_json(&["--synthetic", spec, "--sizes", "0.5", "--engine", engine])["results"][0]
            ["hits"]
            .as_u64()
            .unwrap()
    };
    let fresh = "zipf:alpha=0.9,objects=500,requests=20000,seed=3,size=100";
    let short = "zipf:alpha=0.9,objects=500,requests=20000,seed=3,size=100,ttl=2";
    assert!(run(short, "model") < run(fresh, "model"));
    assert_eq!(run(short, "model"), run(short, "moka"));
    let zero = "zipf:alpha=0.9,objects=500,requests=20000,seed=3,size=100,ttl=0";
    assert_eq!(run(zero, "model"), 0, "nothing storable, nothing hit");
}
