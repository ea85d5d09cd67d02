//! A bounded mutation test in the normal test run: at least 1,000,000 inputs derived from the RFC 4475
//! corpus, the door corpus (`tests/corpus`: what the security tests and scanners such as sipvicious
//! send — truncated datagrams, forged answers, forwarded-source copies, flood junk) and typical
//! INVITE / 200 / BYE messages by seeded random mutations (byte flips, insertions of
//! SIP-significant bytes, deletions, duplications, truncations, splices) go through every parsing path
//! (`medpool_sip::fuzzing::exercise`). Any panic fails the test and prints the seed and the input.
//! `MEDPOOL_MUTATIONS=n` changes the count (never below the default in CI).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use medpool_sip::fuzzing::exercise;

const TYPICAL: &[&[u8]] = &[
    b"INVITE sip:+15551234567@127.0.0.21:5060;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-0;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@127.0.0.1:5070>;tag=1\r\nTo: <sip:+15551234567@127.0.0.21>\r\nCall-ID: 1-12345@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5070;transport=udp>\r\nSupported: 100rel, timer\r\nSession-Expires: 1800;refresher=uac\r\nRecord-Route: <sip:10.0.0.1;lr>, <sip:[2001:db8::1];lr>\r\nContent-Type: application/sdp\r\nContent-Length: 129\r\n\r\nv=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKmp0001abc;received=127.0.0.1;rport=5070\r\nFrom: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.21>;tag=mp0001xyz\r\nCall-ID: 1-12345@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.21:5060>\r\nRSeq: 1\r\nRequire: 100rel\r\nContent-Length: 0\r\n\r\n",
    b"BYE sip:bob@127.0.0.21:5060 SIP/2.0\r\nv: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-9\r\nf: <sip:alice@127.0.0.1>;tag=1\r\nt: <tel:+1-555-1234>;tag=mp0001xyz\r\ni: 1-12345@127.0.0.1\r\nCSeq: 2 BYE\r\nRAck: 1 1 INVITE\r\nReason: Q.850;cause=16;text=\"Normal \\\"call\\\" clearing\"\r\nl: 0\r\n\r\n",
    // What the front door's tests send (node/medpool/tests/flood.rs, sipvicious.rs): a flood INVITE,
    // the flood's junk, a scanner's OPTIONS and REGISTER.
    b"INVITE sip:999@127.0.152.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.152.99:5070;branch=z9hG4bKfl0;rport\r\nFrom: <sip:flood@127.0.152.99>;tag=fl0\r\nTo: <sip:999@127.0.152.1>\r\nCall-ID: flood-5070-0@127.0.152.99\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@127.0.152.99:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    b"GARBAGE 1 \x01\x02 not SIP at all\r\nFoo: bar\r\n\r\nx",
    b"OPTIONS sip:100@127.0.152.102 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.152.98:5091;branch=z9hG4bK-3513360574;rport\r\nMax-Forwards: 70\r\nTo: \"sipvicious\"<sip:100@1.1.1.1>\r\nFrom: \"sipvicious\"<sip:100@1.1.1.1>;tag=3766303039383636313363340131383838303838363836\r\nUser-Agent: friendly-scanner\r\nCall-ID: 345184656780357109160350\r\nContact: <sip:100@127.0.152.98:5091>\r\nCSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n",
    b"REGISTER sip:127.0.152.102 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.152.98:5092;branch=z9hG4bK-1384769511;rport\r\nMax-Forwards: 70\r\nTo: \"100\"<sip:100@127.0.152.102>\r\nFrom: \"100\"<sip:100@127.0.152.102>;tag=31303001343738363730363334\r\nUser-Agent: friendly-scanner\r\nCall-ID: 3891852614\r\nContact: <sip:100@127.0.152.98:5092>\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
];

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\r\n ",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"%",
    b"%2",
    b"@",
    b" ",
    b"\t",
    b"\0",
    b"\xff",
    b"\xc3\xa9",
    b"[",
    b"]",
    b"=",
    b"/",
    b"Content-Length: 99999\r\n",
    b"l: -1\r\n",
    b"z9hG4bK",
    b";tag=",
    b"SIP/2.0",
    b"4294967296",
    b"\r\n\r\n",
    b"Via: SIP/2.0/UDP [::1]:5060;branch=z9hG4bKmp\r\n",
];

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seeds[rng.below(seeds.len())]);
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(i..i, ins.iter().copied());
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                out.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let dup: Vec<u8> = out[i..i + n].to_vec();
                let j = rng.below(out.len() + 1);
                out.splice(j..j, dup);
            }
            4 => {
                let n = rng.below(len + 1);
                out.truncate(n);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let i = rng.below(len + 1);
                let j = rng.below(other.len() + 1);
                out.truncate(i);
                out.extend_from_slice(&other[j..]);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            _ => {}
        }
    }
}

#[test]
fn a_million_mutated_messages_never_panic() {
    let mut seeds: Vec<Vec<u8>> = TYPICAL.iter().map(|s| s.to_vec()).collect();
    for dir in ["tests/rfc4475", "tests/corpus"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "dat") {
                seeds.push(std::fs::read(p).unwrap());
            }
        }
    }
    assert!(seeds.len() > TYPICAL.len() + 49 + 10, "both corpora read");
    let n: u64 = std::env::var("MEDPOOL_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
        .max(1_000_000);
    let seed: u64 = std::env::var("MEDPOOL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_4475);
    println!("mutation test: {n} inputs, seed {seed} (replay with MEDPOOL_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let mut buf = Vec::with_capacity(8192);
    let mut parsed = 0u64;
    for i in 0..n {
        mutate(&mut rng, &seeds, &mut buf);
        let r = std::panic::catch_unwind(|| exercise(&buf));
        match r {
            Ok(p) => parsed += p as u64,
            Err(_) => panic!(
                "panic on input #{i} (seed {seed}): {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    // Mutations should mostly keep messages parseable, or the test exercises little beyond the first line.
    println!("mutation test: {parsed} parsed messages");
    assert!(
        parsed > n / 2,
        "only {parsed} of {n} inputs parsed: the mutator is too destructive"
    );
}
