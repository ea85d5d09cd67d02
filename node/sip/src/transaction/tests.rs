//! Driver tests on paused tokio time: exact retransmission instants, timeouts and outcomes, with a
//! recording [`TransactionIo`] whose messages are plain strings.
//!
//! The mock IO and the helpers are here; the tests, one concern a file: `client`, `server`,
//! `cancel`, `reliable` (reliable transports), `limits` (bounds, errors, re-entrancy), `table`
//! (the sharded table and its sweeps).

mod cancel;
mod client;
mod limits;
mod reliable;
mod server;
mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::*;

type Msg = String;
type TestDriver = Driver<Msg, Arc<MockIo>>;

/// One thing the IO saw, at a time in milliseconds since the test began.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rec {
    Tx(TransactionKey, Msg),
    Tu(TuEvent<Msg>),
}

struct MockIo {
    start: Instant,
    log: Mutex<Vec<(u64, Rec)>>,
    fail_transmit: AtomicBool,
    /// When set, answers every new request with "200" from inside `deliver` (re-entrancy).
    auto_answer: Mutex<Option<TestDriver>>,
}

impl MockIo {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            log: Mutex::new(Vec::new()),
            fail_transmit: AtomicBool::new(false),
            auto_answer: Mutex::new(None),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from((Instant::now() - self.start).as_millis()).unwrap()
    }

    fn record(&self, rec: Rec) {
        let t = self.now_ms();
        self.log.lock().unwrap().push((t, rec));
    }

    /// Every transmission: (ms, message).
    fn txs(&self) -> Vec<(u64, Msg)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|(t, r)| match r {
                Rec::Tx(_, m) => Some((*t, m.clone())),
                Rec::Tu(_) => None,
            })
            .collect()
    }

    /// The instants at which `message` was transmitted.
    fn tx_times(&self, message: &str) -> Vec<u64> {
        self.txs()
            .into_iter()
            .filter(|(_, m)| m == message)
            .map(|(t, _)| t)
            .collect()
    }

    /// Every TU event: (ms, event).
    fn tu(&self) -> Vec<(u64, TuEvent<Msg>)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|(t, r)| match r {
                Rec::Tu(e) => Some((*t, e.clone())),
                Rec::Tx(..) => None,
            })
            .collect()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl MockIo {
    fn sent(&self, key: TransactionKey, message: &Msg) -> Result<(), TransmitError> {
        if self.fail_transmit.load(Ordering::SeqCst) {
            return Err(TransmitError);
        }
        self.record(Rec::Tx(key, message.clone()));
        Ok(())
    }
}

impl TransactionIo<Msg> for MockIo {
    fn transmit(&self, key: &ClientKey, request: &Msg) -> Result<(), TransmitError> {
        self.sent(TransactionKey::Client(key.clone()), request)
    }

    fn transmit_response(&self, key: &ServerKey, response: &Msg) -> Result<(), TransmitError> {
        self.sent(TransactionKey::Server(key.clone()), response)
    }

    fn build_ack(&self, request: &Msg, response: &Msg) -> Msg {
        format!("ACK({request}|{response})")
    }

    fn deliver(&self, event: TuEvent<Msg>) {
        let answer = match &event {
            TuEvent::Request { key, .. } => self
                .auto_answer
                .lock()
                .unwrap()
                .clone()
                .map(|d| (d, key.clone())),
            _ => None,
        };
        self.record(Rec::Tu(event));
        if let Some((driver, key)) = answer {
            driver.respond(&key, 200, "200".into()).unwrap();
        }
    }
}

fn setup_with(config: DriverConfig) -> (TestDriver, Arc<MockIo>) {
    let io = MockIo::new();
    (Driver::new(config, Arc::clone(&io)), io)
}

/// A driver that fires every timer at its exact deadline (no linger grid): the tests check the
/// machines' RFC timing to the millisecond.
fn setup() -> (TestDriver, Arc<MockIo>) {
    setup_with(exact())
}

fn exact() -> DriverConfig {
    DriverConfig {
        linger_grid: Duration::ZERO,
        ..DriverConfig::default()
    }
}

/// Sleep until `ms` milliseconds after the test began.
async fn at(io: &MockIo, ms: u64) {
    sleep_until(io.start + Duration::from_millis(ms)).await;
}

fn ckey(branch: &str, method: &str) -> ClientKey {
    ClientKey::new(branch.as_bytes(), method.as_bytes())
}

fn skey(branch: &str, method: &str) -> ServerKey {
    ServerKey::from_parts(branch.as_bytes(), b"192.0.2.1:5060", method.as_bytes()).unwrap()
}

fn terminated(key: impl Into<TransactionKey>, outcome: Outcome) -> TuEvent<Msg> {
    TuEvent::Terminated {
        key: key.into(),
        outcome,
    }
}

fn response(key: &ClientKey, status: u16, msg: &str) -> TuEvent<Msg> {
    TuEvent::Response {
        key: key.clone(),
        status,
        response: msg.into(),
    }
}

fn request(key: &ServerKey, msg: &str) -> TuEvent<Msg> {
    TuEvent::Request {
        key: key.clone(),
        request: msg.into(),
    }
}
