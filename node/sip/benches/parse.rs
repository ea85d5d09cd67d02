//! Parse + typed access of a typical 1 KB INVITE with SDP: Via, From, To, CSeq, Call-ID.
//! Run: `cargo bench -p medpool-sip --bench parse`. rsip 0.4 is measured in the same run for reference.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use medpool_sip::{Limits, SipMessage};

/// A typical INVITE from a front-end towards a gateway: 1 KB with SDP.
pub const INVITE: &[u8] = b"INVITE sip:+14155550123@gw1.example.net:5060;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/UDP 10.1.2.9:5060;branch=z9hG4bKnashds8;received=10.1.2.9\r\n\
Max-Forwards: 69\r\n\
From: \"Alice Example\" <sip:+14155550100@example.com;user=phone>;tag=1928301774\r\n\
To: <sip:+14155550123@gw1.example.net;user=phone>\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+14155550100@10.1.2.3:5060;transport=udp>\r\n\
Record-Route: <sip:10.1.2.9;lr>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, PRACK, UPDATE, INFO\r\n\
Supported: 100rel, timer, replaces\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Min-SE: 90\r\n\
P-Asserted-Identity: \"Alice Example\" <sip:+14155550100@example.com;user=phone>\r\n\
User-Agent: ExamplePBX/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 272\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 10.1.2.3\r\n\
s=-\r\n\
c=IN IP4 10.1.2.3\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 18 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn medpool(c: &mut Criterion) {
    let limits = Limits::default();
    let bytes = bytes::Bytes::from_static(INVITE);
    let mut g = c.benchmark_group("parse_invite_1k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("medpool_sip", |b| {
        b.iter(|| {
            let m = SipMessage::parse_datagram(black_box(bytes.clone()), &limits).unwrap();
            let via = m.top_via().unwrap().unwrap();
            let from = m.from().unwrap().unwrap();
            let to = m.to().unwrap().unwrap();
            let cseq = m.cseq().unwrap().unwrap();
            let call_id = m.call_id().unwrap().unwrap();
            black_box((via.branch(), from.tag(), to.tag(), cseq.seq, call_id));
        })
    });
    g.bench_function("rsip_0_4", |b| {
        use rsip::prelude::*;
        b.iter(|| {
            let m = rsip::SipMessage::try_from(black_box(INVITE)).unwrap();
            let via = m.via_header().unwrap().typed().unwrap();
            let from = m.from_header().unwrap().typed().unwrap();
            let to = m.to_header().unwrap().typed().unwrap();
            let cseq = m.cseq_header().unwrap().typed().unwrap();
            let call_id = m.call_id_header().unwrap().value().to_owned();
            black_box((
                via.branch().cloned(),
                from.tag().cloned(),
                to.tag().cloned(),
                cseq.seq,
                call_id,
            ));
        })
    });
    g.finish();
}

criterion_group!(benches, medpool);
criterion_main!(benches);
