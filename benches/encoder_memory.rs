//! Heap one compression encoder holds while it runs, per coding at outpost's default levels,
//! through outpost's own encoder path (`Compression::encode`, which fits brotli's and
//! zstd's windows to a body of known length) on the text in `testdata/text/`: the memory
//! each response being encoded costs (issue 17, target 6), at each coding's lowest, default
//! and highest level, beside the estimate the encoders' budget counts
//! (`Compression::encoder_memory`). Prints a table.
//! Run: `cargo bench --bench encoder_memory`.

use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use outpost::body::Body;
use outpost::config::CompressionConfig;
use outpost::transform::compress::{Coding, Compression};

/// glibc's allocator statistics (`mallinfo2(3)`); the bench runs on glibc's allocator, which
/// both Rust and the C codecs (zstd) allocate from.
#[repr(C)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    /// Bytes in chunks mapped on their own (large allocations).
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    /// Bytes in use in the heap proper.
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    fn mallinfo2() -> MallInfo2;
}

/// Heap bytes in use now, by Rust and C alike.
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 takes nothing and returns a struct by value.
    let info = unsafe { mallinfo2() };
    info.uordblks + info.hblkhd
}

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/text");
    let mut corpus = Vec::new();
    for entry in std::fs::read_dir(dir).expect("testdata/text exists") {
        corpus.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let defaults = CompressionConfig::default();
    println!("| coding | level | input | heap held by the running encoder | outpost's estimate |");
    println!("|---|---|---|---|---|");
    // Each coding's lowest, default and highest level.
    let runs = [
        (Coding::Gzip, [1, defaults.gzip_level, 9]),
        (Coding::Br, [1, defaults.brotli_level, 11]),
        (Coding::Zstd, [1, defaults.zstd_level, 19]),
    ];
    for (coding, level) in runs
        .into_iter()
        .flat_map(|(c, levels)| levels.map(|l| (c, l)))
    {
        let config = CompressionConfig {
            gzip_level: level,
            brotli_level: level,
            zstd_level: level,
            ..CompressionConfig::default()
        };
        let compression = Compression::new(&config, Default::default());
        for (input_len, told) in [(100 << 10, true), (1 << 20, true), (1 << 20, false)] {
            // Repeated as needed: the window an encoder fills grows with its input.
            let input: Vec<u8> = corpus.iter().copied().cycle().take(input_len).collect();
            let input = bytes::Bytes::from(input);
            let body = if told {
                Body::full(input.clone())
            } else {
                // In pieces of unknown total, as a chunked response arrives.
                let pieces: Vec<_> = input
                    .chunks(16 << 10)
                    .map(|piece| Ok::<_, std::io::Error>(Frame::data(input.slice_ref(piece))))
                    .collect();
                Body::boxed(StreamBody::new(futures_util::stream::iter(pieces)))
            };
            let baseline = heap_in_use();
            let mut encoded = compression.encode(body, coding);
            let held = runtime.block_on(async {
                let first = encoded.frame().await;
                let held = heap_in_use();
                drop(first);
                while encoded.frame().await.is_some() {}
                held
            });
            drop(encoded);
            let estimate = compression.encoder_memory(coding, told.then_some(input_len as u64));
            println!(
                "| {} | {level} | {} KiB{} | {} KiB | {} KiB |",
                coding.as_str(),
                input_len >> 10,
                if told { "" } else { ", length unknown" },
                held.saturating_sub(baseline) >> 10,
                estimate >> 10,
            );
        }
    }
}
