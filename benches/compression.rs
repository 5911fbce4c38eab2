//! Compression ratio and CPU cost per codec and level on the text in `testdata/text/`,
//! through outpost's own encoder path (`Compression::encode`, streaming, as on a first hit).
//! Prints a table; used to choose the default levels. Run: `cargo bench --bench compression`.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use outpost::body::Body;
use outpost::config::CompressionConfig;
use outpost::transform::compress::{Coding, Compression};

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/text");
    let mut corpus = Vec::new();
    for entry in std::fs::read_dir(dir).expect("testdata/text exists") {
        let path = entry.unwrap().path();
        corpus.push(std::fs::read(&path).unwrap());
    }
    let total: usize = corpus.iter().map(Vec::len).sum();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!("corpus: {} files, {total} bytes", corpus.len());
    println!("| codec | level | ratio (in/out) | MB/s (one core) | us per 100 KiB |");
    println!("|---|---|---|---|---|");
    let cases: &[(Coding, &[i32])] = &[
        (Coding::Gzip, &[1, 4, 6, 9]),
        (Coding::Br, &[1, 3, 4, 5, 6, 8, 11]),
        (Coding::Zstd, &[1, 3, 6, 9, 12, 19]),
    ];
    for (coding, levels) in cases {
        for &level in *levels {
            let config = CompressionConfig {
                gzip_level: if *coding == Coding::Gzip { level } else { 6 },
                brotli_level: if *coding == Coding::Br { level } else { 5 },
                zstd_level: if *coding == Coding::Zstd { level } else { 6 },
                ..CompressionConfig::default()
            };
            let compression = Compression::new(&config, Default::default());
            let mut out_bytes = 0usize;
            let mut rounds = 0u32;
            let started = Instant::now();
            // At least three passes and 300 ms per case, so slow levels are still measured.
            while rounds < 3 || started.elapsed() < Duration::from_millis(300) {
                out_bytes = 0;
                for file in &corpus {
                    let encoded = compression.encode(Body::full(file.clone()), *coding);
                    let bytes = runtime.block_on(encoded.collect()).unwrap().to_bytes();
                    out_bytes += bytes.len();
                }
                rounds += 1;
            }
            let seconds = started.elapsed().as_secs_f64() / f64::from(rounds);
            let mb_per_s = total as f64 / seconds / 1e6;
            println!(
                "| {} | {level} | {:.2} | {:.0} | {:.0} |",
                coding.as_str(),
                total as f64 / out_bytes as f64,
                mb_per_s,
                102_400.0 / (mb_per_s * 1e6) * 1e6,
            );
        }
    }
}
