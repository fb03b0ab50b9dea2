//! The per-byte work on a job's output, against the logs target of
//! 300 MB/s end to end: masking secrets (the agent, every byte of every
//! job that has secrets), the running checksum (both ends), and decoding the
//! frames a live follower reads. 1 MiB of 64-byte lines per iteration.
//! `cargo bench -p hodei-core --bench log_path`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hodei_core::LogStream;
use hodei_core::frames::{self, Decoder, Frame};
use hodei_core::log::StreamTotal;
use hodei_core::mask::{Masker, Patterns};

const MIB: usize = 1 << 20;
/// What `hodei agent` reads from a pipe at once.
const CHUNK: usize = 64 * 1024;

fn output() -> Vec<u8> {
    let line = b"2026-11-29T05:00:00Z step 42 of 100: compiling hodei-core ok\n";
    line.iter().copied().cycle().take(MIB).collect()
}

fn log_path(c: &mut Criterion) {
    let data = output();
    let mut group = c.benchmark_group("1 MiB of output");
    group.throughput(Throughput::Bytes(MIB as u64));
    let secrets: [&[u8]; 3] = [b"hunter2-hunter2", b"AKIAEXAMPLEKEY123456", b"s3cr3t-t0k3n"];
    let patterns = Arc::new(Patterns::new(secrets));
    group.bench_function("masking 3 secrets, 64 KiB reads", |b| {
        b.iter(|| {
            let mut masker = Masker::new(patterns.clone());
            let mut out = 0;
            for chunk in data.chunks(CHUNK) {
                out += masker.feed(chunk).len();
            }
            black_box(out + masker.flush().len())
        })
    });
    group.bench_function("checksum (crc32c)", |b| {
        b.iter(|| black_box(StreamTotal::default().append(&data)))
    });
    let mut body = Vec::new();
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let frame = Frame::Log {
            attempt: 1,
            stream: LogStream::Stdout,
            offset: (i * CHUNK) as u64,
            timestamp_ms: 0,
            data: Bytes::copy_from_slice(chunk),
        };
        body.extend_from_slice(&frames::encode(&frame));
    }
    group.bench_function("decoding log frames, 16 KiB reads", |b| {
        b.iter(|| {
            let mut decoder = Decoder::default();
            let mut bytes = 0;
            for read in body.chunks(16 * 1024) {
                decoder.feed(read);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    if let Frame::Log { data, .. } = frame {
                        bytes += data.len();
                    }
                }
            }
            black_box(bytes)
        })
    });
    group.finish();
}

criterion_group!(benches, log_path);
criterion_main!(benches);
