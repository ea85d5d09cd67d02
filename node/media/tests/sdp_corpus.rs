//! Round trips over real-world SDP: the RFC 4475 bodies, SIPp's scenarios, and Lync/SfB-, Cisco
//! CUBE-, AudioCodes- and browser-style offers (tests/sdp/README.md says where each comes from).
//! A rewrite changes the lines it names and nothing else, byte for byte; malformed input is a
//! typed error, never a panic.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use medpool_media::sdp::{Direction, Sdp, SdpError};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The body of a SIP message: after the blank line, cut at Content-Length when it is sane.
fn sip_body(msg: &[u8]) -> Option<&[u8]> {
    let split = msg.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (head, body) = (&msg[..split], &msg[split + 4..]);
    let head = String::from_utf8_lossy(head);
    let cl = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        (name == "content-length" || name == "l")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    Some(match cl {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    })
}

fn rfc4475_bodies() -> Vec<(String, Vec<u8>)> {
    let dir = manifest().join("../sip/tests/rfc4475");
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    entries.sort();
    for p in entries {
        let msg = std::fs::read(&p).unwrap();
        if let Some(body) = sip_body(&msg)
            && body.starts_with(b"v=0")
        {
            out.push((
                format!("rfc4475/{}", p.file_name().unwrap().to_string_lossy()),
                body.to_vec(),
            ));
        }
    }
    out
}

fn files() -> Vec<(String, Vec<u8>)> {
    let dir = manifest().join("tests/sdp");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sdp"))
        .collect();
    entries.sort();
    entries
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn crlf_to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for (i, &c) in b.iter().enumerate() {
        if c == b'\r' && b.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Every corpus body, plus its LF-only form and its form without a final line ending.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, body) in files().into_iter().chain(rfc4475_bodies()) {
        let lf = crlf_to_lf(&body);
        if lf != body {
            out.push((format!("{name} (LF)"), lf));
        }
        let mut cut = body.clone();
        while cut.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
            cut.pop();
        }
        out.push((format!("{name} (no final EOL)"), cut));
        out.push((name, body));
    }
    out
}

fn lines_with_eol(b: &[u8]) -> Vec<&[u8]> {
    b.split_inclusive(|&c| c == b'\n').collect()
}

fn content(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// Lines an anchoring rewrite may touch.
fn touched(line: &[u8]) -> bool {
    let c = content(line).to_ascii_lowercase();
    [
        "o=",
        "c=",
        "m=",
        "a=rtcp:",
        "a=rtcp-mux",
        "a=sendrecv",
        "a=sendonly",
        "a=recvonly",
        "a=inactive",
        "a=ptime:",
        "a=rtpmap:",
        "a=fmtp:",
        "a=rtcp-fb:",
        "a=crypto:",
    ]
    .iter()
    .any(|p| c.starts_with(p.as_bytes()))
}

#[test]
fn the_corpus_has_what_the_issue_asks_for() {
    let rfc = rfc4475_bodies();
    assert!(
        rfc.len() >= 15,
        "only {} RFC 4475 bodies with SDP found",
        rfc.len()
    );
    let names: Vec<String> = files().into_iter().map(|(n, _)| n).collect();
    for needed in [
        "sipp_uac",
        "sipp_uac_pcap",
        "sipp_uas",
        "lync",
        "cisco",
        "audiocodes",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(needed)),
            "no corpus file for {needed}: {names:?}"
        );
    }
}

#[test]
fn every_corpus_body_parses() {
    for (name, body) in corpus() {
        if let Err(e) = Sdp::parse(&body) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn a_rewrite_without_edits_is_byte_identical() {
    for (name, body) in corpus() {
        let sdp = Sdp::parse(&body).unwrap();
        assert_eq!(sdp.rewrite().finish(), body, "{name}");
    }
}

struct Plan {
    version: u64,
    ip: IpAddr,
    media: Vec<MediaPlan>,
}

struct MediaPlan {
    port: u16,
    /// (from, to, encoding of `from`)
    payloads: Option<Vec<(u8, u8, Option<String>)>>,
    fmtps: Vec<(u8, String)>,
    had_crypto: bool,
}

/// The rewrite an anchor makes for a hold offer: address, ports, RTCP, direction, ptime, payload
/// list (the last one dropped, dynamic ones renumbered downwards from 127), crypto, version.
fn anchor(sdp: &Sdp<'_>, ip: IpAddr) -> (Vec<u8>, Plan) {
    let mut rw = sdp.rewrite();
    rw.bump_origin_version().connection(ip);
    let mut plan = Plan {
        version: sdp.origin.version + 1,
        ip,
        media: Vec::new(),
    };
    for (i, m) in sdp.media.iter().enumerate() {
        let port = 20000 + 2 * i as u16;
        let mut mr = rw.media(i).unwrap();
        mr.port(port)
            .rtcp(Some((port + 1, None)))
            .rtcp_mux(i % 2 == 0)
            .direction(Direction::SendOnly)
            .ptime(Some(30));
        let mut mp = MediaPlan {
            port,
            payloads: None,
            fmtps: Vec::new(),
            had_crypto: !m.crypto.is_empty(),
        };
        if let Some(pts) = m.payload_types() {
            let keep = if pts.len() > 1 {
                &pts[..pts.len() - 1]
            } else {
                &pts[..]
            };
            let mut next = 127u8;
            let map: Vec<(u8, u8)> = keep
                .iter()
                .map(|&pt| {
                    if pt >= 96 {
                        next -= 1;
                        (pt, next + 1)
                    } else {
                        (pt, pt)
                    }
                })
                .collect();
            // Renumbering may collide with a kept static or dynamic number: skip those cases.
            let mut tos: Vec<u8> = map.iter().map(|p| p.1).collect();
            tos.sort_unstable();
            tos.dedup();
            if tos.len() == map.len() && mr.payloads(&map).is_ok() {
                for f in &m.fmtps {
                    if let Some(&(_, to)) =
                        map.iter().find(|(from, _)| f.format == from.to_string())
                    {
                        mp.fmtps.push((to, f.params.to_owned()));
                    }
                }
                mp.payloads = Some(
                    map.iter()
                        .map(|&(from, to)| {
                            (from, to, m.rtpmap(from).map(|r| r.encoding.to_owned()))
                        })
                        .collect(),
                );
            }
        }
        if mp.had_crypto {
            mr.crypto(&[b"1 AES_CM_128_HMAC_SHA1_80 inline:AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHHIIIIJJJJ|2^31|1:1"])
                .unwrap();
        }
        plan.media.push(mp);
    }
    (rw.finish(), plan)
}

fn check_anchor(name: &str, body: &[u8], ip: IpAddr) {
    let sdp = Sdp::parse(body).unwrap();
    let (out, plan) = anchor(&sdp, ip);

    // 1. Outside the touched lines, the body is unchanged byte for byte, endings and order included.
    let before: Vec<&[u8]> = lines_with_eol(body)
        .into_iter()
        .filter(|l| !touched(l))
        .collect();
    let after: Vec<&[u8]> = lines_with_eol(&out)
        .into_iter()
        .filter(|l| !touched(l))
        .collect();
    let last_cut = |v: &Vec<&[u8]>| v.iter().map(|l| content(l).to_vec()).collect::<Vec<_>>();
    if body.ends_with(b"\n") {
        assert_eq!(before, after, "{name}: untouched lines changed");
    } else {
        // The final line may gain an ending when lines are added after it.
        assert_eq!(
            last_cut(&before),
            last_cut(&after),
            "{name}: untouched lines changed"
        );
    }

    // 2. Endings stay in the body's style.
    let crlf = body.windows(2).any(|w| w == b"\r\n");
    for l in lines_with_eol(&out) {
        if l.ends_with(b"\n") {
            assert_eq!(
                l.ends_with(b"\r\n"),
                crlf,
                "{name}: line ending style changed: {l:?}"
            );
        }
    }

    // 3. The touched values are the new ones.
    let new = Sdp::parse(&out).unwrap_or_else(|e| panic!("{name}: rewritten body: {e}"));
    assert_eq!(new.origin.version, plan.version, "{name}");
    assert_eq!(new.origin.session_id, sdp.origin.session_id, "{name}");
    assert_eq!(new.media.len(), sdp.media.len(), "{name}");
    for (i, (m, mp)) in new.media.iter().zip(&plan.media).enumerate() {
        assert_eq!(m.port, mp.port, "{name} m{i}");
        assert_eq!(m.proto, sdp.media[i].proto, "{name} m{i}");
        assert_eq!(
            m.effective_connection(&new).and_then(|c| c.ip()),
            Some(plan.ip),
            "{name} m{i}"
        );
        assert_eq!(m.direction, Some(Direction::SendOnly), "{name} m{i}");
        assert_eq!(m.ptime, Some(30), "{name} m{i}");
        assert_eq!(
            m.rtcp.as_ref().map(|r| r.port),
            Some(mp.port + 1),
            "{name} m{i}"
        );
        assert_eq!(m.rtcp_mux, i % 2 == 0, "{name} m{i}");
        if let Some(p) = &mp.payloads {
            let tos: Vec<u8> = p.iter().map(|x| x.1).collect();
            assert_eq!(m.payload_types().unwrap(), tos, "{name} m{i}");
            for (from, to, enc) in p {
                assert_eq!(
                    m.rtpmap(*to).map(|r| r.encoding.to_owned()),
                    enc.clone(),
                    "{name} m{i}: rtpmap of {from} → {to}"
                );
            }
            assert!(
                m.rtpmaps.iter().all(|r| tos.contains(&r.payload_type)),
                "{name} m{i}"
            );
            let fmtps: Vec<(u8, String)> = m
                .fmtps
                .iter()
                .map(|f| (f.format.parse().unwrap(), f.params.to_owned()))
                .collect();
            assert_eq!(fmtps, mp.fmtps, "{name} m{i}");
        }
        assert_eq!(m.crypto.len(), usize::from(mp.had_crypto), "{name} m{i}");
    }
}

#[test]
fn an_anchoring_rewrite_changes_only_the_touched_lines() {
    let mut checked = 0;
    for (name, body) in corpus() {
        check_anchor(&name, &body, IpAddr::V4(Ipv4Addr::new(127, 0, 155, 1)));
        check_anchor(&name, &body, IpAddr::V6(Ipv6Addr::LOCALHOST));
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} bodies checked");
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const NASTY: &[&[u8]] = &[
    b"",
    b"=",
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b" ",
    b":",
    b"/",
    b"99999999999999999999999",
    b"-1",
    b"m=",
    b"a=rtpmap:",
    b"a=rtcp:",
    b"c=IN",
    b"o=",
    b"\xff\xfe",
    b"v=0",
    b"128",
    b"65536",
];

/// Mutates a body: a byte changed, a range deleted or duplicated, a nasty token spliced in, a
/// truncation.
fn mutate(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            1 => {
                let end = (at + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            2 => {
                let end = (at + rng.below(32)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
            3 => {
                let t = NASTY[rng.below(NASTY.len())];
                b.splice(at..at, t.iter().copied());
            }
            _ => b.truncate(at),
        }
    }
    b
}

#[test]
fn mutated_bodies_are_typed_errors_or_round_trip_never_panics() {
    let mut rng = Rng(0x5eed_0014_6d65_6469);
    let (mut ok, mut err) = (0usize, 0usize);
    for (name, body) in corpus() {
        for round in 0..300 {
            let m = mutate(&mut rng, &body);
            match Sdp::parse(&m) {
                Ok(sdp) => {
                    ok += 1;
                    assert_eq!(sdp.rewrite().finish(), m, "{name} round {round}");
                    let (out, _) = anchor(&sdp, IpAddr::V4(Ipv4Addr::new(127, 0, 155, 9)));
                    Sdp::parse(&out).unwrap_or_else(|e| {
                        panic!("{name} round {round}: the rewrite of a valid body fails: {e}")
                    });
                }
                Err(SdpError { line, .. }) => {
                    err += 1;
                    assert!(
                        line <= m.split(|&c| c == b'\n').count(),
                        "{name}: line {line} out of range"
                    );
                }
            }
        }
    }
    // Both outcomes occur, or the mutations test nothing.
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}
