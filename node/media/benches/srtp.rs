//! SRTP cost per packet: protect, and protect + unprotect, of a 172-byte RTP packet (20 ms of
//! G.711), AES_CM_128_HMAC_SHA1_80, in place in one buffer as the relay does it.
//! Run: `cargo bench -p medpool-media --bench srtp`.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use medpool_media::srtp::{KeyParams, MasterKey, ReplayWindow, Srtp, Suite};

fn key() -> KeyParams {
    KeyParams {
        master: MasterKey::new([7; 16], [9; 14]),
        lifetime: None,
        mki: None,
    }
}

/// A 172-byte RTP packet: 12-byte header, 160 bytes of payload.
fn packet() -> [u8; 172] {
    let mut p = [0x55u8; 172];
    p[..12].copy_from_slice(&[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]);
    p
}

fn bench(c: &mut Criterion) {
    let suite = Suite::AesCm128HmacSha1_80;
    let plain = packet();
    let mut g = c.benchmark_group("srtp_172B");
    g.throughput(Throughput::Elements(1));

    let mut tx = Srtp::new(suite, &key(), ReplayWindow::W64);
    let mut buf = [0u8; 256];
    let mut seq = 0u16;
    g.bench_function("protect", |b| {
        b.iter(|| {
            buf[..172].copy_from_slice(&plain);
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            seq = seq.wrapping_add(1);
            black_box(tx.protect_rtp(&mut buf, 172).unwrap())
        })
    });

    let mut tx = Srtp::new(suite, &key(), ReplayWindow::W64);
    let mut rx = Srtp::new(suite, &key(), ReplayWindow::W64);
    let mut seq = 0u16;
    g.bench_function("protect+unprotect", |b| {
        b.iter(|| {
            buf[..172].copy_from_slice(&plain);
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            seq = seq.wrapping_add(1);
            let n = tx.protect_rtp(&mut buf, 172).unwrap();
            black_box(rx.unprotect_rtp(&mut buf[..n]).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
