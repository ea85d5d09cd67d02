//! Reliable transports: no retransmissions, and Timers D, I, J, K zero.

use super::*;

#[tokio::test(start_paused = true)]
async fn reliable_transport_no_retransmissions_and_d_i_j_k_zero() {
    let (driver, io) = setup();
    let inv = ckey("z9hG4bKt1", "INVITE");
    let opt = ckey("z9hG4bKt2", "OPTIONS");
    let sinv = skey("z9hG4bKt3", "INVITE");
    let sopt = skey("z9hG4bKt4", "OPTIONS");
    let silent = ckey("z9hG4bKt5", "INVITE");
    driver
        .start_client(inv.clone(), "INVITE".into(), true)
        .unwrap();
    driver
        .start_client(opt.clone(), "OPTIONS".into(), true)
        .unwrap();
    driver
        .start_client(silent.clone(), "INVITE-silent".into(), true)
        .unwrap();
    driver
        .on_request(sinv.clone(), false, "sINVITE".into(), true)
        .unwrap();
    driver
        .on_request(sopt.clone(), false, "sOPTIONS".into(), true)
        .unwrap();
    at(&io, 1_000).await;
    driver.on_response(inv.clone(), 486, "486".into());
    driver.on_response(opt.clone(), 200, "200".into());
    driver.respond(&sinv, 486, "s486".into()).unwrap();
    driver.respond(&sopt, 200, "s200".into()).unwrap();
    at(&io, 2_000).await;
    driver
        .on_request(sinv.clone(), true, "ACK".into(), true)
        .unwrap();
    at(&io, 40_000).await;
    assert_eq!(
        io.txs(),
        [
            (0, "INVITE".into()),
            (0, "OPTIONS".into()),
            (0, "INVITE-silent".into()),
            (1_000, "ACK(INVITE|486)".into()),
            (1_000, "s486".into()),
            (1_000, "s200".into()),
        ]
    );
    let ends: Vec<_> = io
        .tu()
        .into_iter()
        .filter(|(_, e)| matches!(e, TuEvent::Terminated { .. }))
        .collect();
    assert_eq!(
        ends,
        [
            (1_000, terminated(inv, Outcome::Completed)), // Timer D = 0
            (1_000, terminated(opt, Outcome::Completed)), // Timer K = 0
            (1_000, terminated(sopt, Outcome::Completed)), // Timer J = 0
            (2_000, terminated(sinv, Outcome::Completed)), // Timer I = 0
            (32_000, terminated(silent, Outcome::Timeout)), // Timer B still runs
        ]
    );
    assert!(driver.is_empty());
}
