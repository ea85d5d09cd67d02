//! Running scenarios and judging the run. CI mode runs every scenario once in a fixed order; soak
//! mode repeats scenarios drawn from the seed until a duration or a round count is reached, printing
//! a progress line per round and checking the invariants after every round (it stops at the first
//! violation). Both end with the summary table: per scenario the runs, faults injected, calls placed,
//! survived, refused and unknown; per invariant its result. The seed is printed first and again with
//! any failure: `--seed` replays the same schedule.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use medpool_simpeer::Outcome;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::invariants::{Verdict, check_all};
use crate::pool::Net;
use crate::scenarios::{Faults, Scenario};
use crate::world::{World, WorldOptions};

/// How long and what to run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Every scenario once.
    Ci,
    /// Random scenarios until this much time has passed.
    Soak(Duration),
    /// Random scenarios, this many rounds.
    Rounds(u32),
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The seed.
    pub seed: u64,
    /// The mode.
    pub mode: Mode,
    /// The scenarios to use (all by default).
    pub scenarios: Vec<Scenario>,
    /// The 127.0.N.x block.
    pub net: Net,
    /// In the runner's namespace (`Some(name)`) or not.
    pub netns: Option<String>,
}

/// Per scenario, for the summary.
#[derive(Debug, Clone, Default)]
struct Row {
    runs: u32,
    faults: u32,
    placed: usize,
    survived: usize,
    refused: usize,
    unknown: usize,
    errors: u32,
    secs: f64,
    skipped: Option<&'static str>,
}

/// What a run ended with.
#[derive(Debug)]
pub struct Report {
    /// The summary table (printed).
    pub table: String,
    /// Every invariant held and no scenario failed.
    pub passed: bool,
}

/// Runs `cfg`; prints progress to stderr and returns the report.
pub async fn run(cfg: RunConfig) -> Report {
    let started = Instant::now();
    let network = match &cfg.netns {
        Some(ns) => format!("network namespace {ns}: partitions and loss by iptables, tmpfs for disk-full"),
        None => "no network namespace (not root or `ip netns` unavailable): partition and disk-full NOT RUN; loss and delay in the forwarder only".to_owned(),
    };
    eprintln!(
        "medpool chaos: seed {:#x} (replay with --seed {:#x}); {network}",
        cfg.seed, cfg.seed
    );
    let mut w = match World::start(WorldOptions {
        seed: cfg.seed,
        net: cfg.net,
        netns: cfg.netns.is_some(),
    })
    .await
    {
        Ok(w) => w,
        Err(e) => {
            return Report {
                table: format!("the pool did not start: {e}\nseed {:#x}", cfg.seed),
                passed: false,
            };
        }
    };
    let mut rows: BTreeMap<Scenario, Row> = BTreeMap::new();
    let mut faults_by_kind: Faults = Faults::new();
    let mut errors: Vec<String> = Vec::new();
    let mut schedule = SmallRng::seed_from_u64(cfg.seed ^ 0x5eed_5eed);
    let available: Vec<Scenario> = cfg
        .scenarios
        .iter()
        .copied()
        .filter(|s| {
            let why = s.unavailable(&w);
            if let Some(why) = why {
                rows.entry(*s).or_default().skipped = Some(why);
                eprintln!("scenario {} NOT RUN: {why}", s.name());
            }
            why.is_none()
        })
        .collect();
    let mut verdicts: Vec<Verdict>;
    let mut round = 0u32;
    loop {
        let scenario = match &cfg.mode {
            Mode::Ci => match available.get(round as usize) {
                Some(s) => *s,
                None => break,
            },
            Mode::Rounds(n) if round >= *n => break,
            Mode::Soak(d) if started.elapsed() >= *d => break,
            _ if available.is_empty() => break,
            _ => available[schedule.random_range(0..available.len())],
        };
        round += 1;
        w.label = format!("{}#{round}", scenario.name());
        w.rng = SmallRng::seed_from_u64(
            cfg.seed ^ u64::from(round).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        eprintln!(
            "── round {round} · {} · {:.0} s elapsed",
            scenario.name(),
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let result = scenario.run(&mut w).await;
        // Whatever the scenario left broken (it failed half-way) is healed before judging.
        if let Some(f) = w.firewall.as_mut() {
            f.heal();
        }
        w.gws[0].set_silent(false);
        w.fwd.impair(0.0, Duration::ZERO, 0);
        if let Err(e) = &result {
            eprintln!("    SCENARIO ERROR: {e}");
            errors.push(format!("[{}] {e}", w.label));
            w.recover().await;
        }
        w.converge().await;
        w.collect().await;
        let row = rows.entry(scenario).or_default();
        row.runs += 1;
        row.secs += t.elapsed().as_secs_f64();
        if let Ok(f) = &result {
            for (k, n) in f {
                row.faults += n;
                *faults_by_kind.entry(k).or_insert(0) += n;
            }
        } else {
            row.errors += 1;
        }
        let label = w.label.clone();
        let (placed, survived, refused, unknown) = tally(&w, &label);
        row.placed += placed;
        row.survived += survived;
        row.refused += refused;
        row.unknown += unknown;
        let gw: Vec<String> = w
            .gws
            .iter()
            .map(|g| {
                let c = g.counts();
                format!(
                    "calls {} byes {} 481s {} cseq-out-of-order {}",
                    c.calls, c.byes, c.unknown_dialog, c.cseq_out_of_order
                )
            })
            .collect();
        // Every call of the round has ended: records still in the pool once their removals had
        // time to commit are left over (a call ended on a node SIGKILLed before its removal went
        // out, RELIABILITY.md "Known limits"), and a count that grows round after round is a leak.
        let records = records_left(&mut w).await;
        eprintln!(
            "    round {round} done in {:.1} s: calls placed {placed}, survived {survived}, refused {refused}, unknown {unknown}; records left {records}; gateways (so far): [{}]",
            t.elapsed().as_secs_f64(),
            gw.join("; ")
        );
        for c in w
            .obs
            .calls
            .iter()
            .filter(|c| c.scenario == label && !(c.record.survived() && c.record.bye.is_some()))
            .take(5)
        {
            let r = &c.record;
            let show = |o: Option<Outcome>| o.map_or_else(|| "-".to_owned(), |o| o.to_string());
            eprintln!(
                "      call {} ({}): set-up {} (from {:?}), re-INVITE {}, BYE {}, ended by the pool {}",
                r.index,
                r.call_id,
                show(r.setup),
                r.setup_answered_by.map(|a| a.0),
                show(r.reinvite),
                show(r.bye),
                r.ended_by_far_side
            );
        }
        if !matches!(cfg.mode, Mode::Ci) {
            verdicts = check_all(&w.obs);
            if let Some(v) = verdicts.iter().find(|v| !v.held()) {
                eprintln!(
                    "    INVARIANT {} VIOLATED in round {round}: stopping",
                    v.name
                );
                break;
            }
            if !errors.is_empty() {
                eprintln!("    stopping after a scenario error");
                break;
            }
        }
    }
    w.collect().await;
    verdicts = check_all(&w.obs);
    let passed = verdicts.iter().all(Verdict::held) && errors.is_empty() && round > 0;
    let table = summary(
        &cfg,
        &rows,
        &faults_by_kind,
        &verdicts,
        &errors,
        &network,
        started.elapsed(),
    );
    if !passed {
        w.pool.keep_dir();
        eprintln!(
            "data, logs and audit reports kept in {}",
            w.pool.dir().display()
        );
    }
    Report { table, passed }
}

/// (placed, survived, refused, unknown) of the calls filed under `label` (fresh calls included).
fn tally(w: &World, label: &str) -> (usize, usize, usize, usize) {
    let calls: Vec<_> = w
        .obs
        .calls
        .iter()
        .filter(|c| c.scenario == label && c.record.setup.is_some())
        .collect();
    let placed = calls.len();
    let survived = calls
        .iter()
        .filter(|c| c.record.survived() && c.record.bye.is_some())
        .count();
    let unknown = calls
        .iter()
        .filter(|c| {
            [c.record.setup, c.record.reinvite, c.record.bye].contains(&Some(Outcome::Unknown))
        })
        .count();
    let refused = calls
        .iter()
        .filter(|c| matches!(c.record.setup, Some(Outcome::Final(s)) if s >= 300))
        .count();
    (placed, survived, refused, unknown)
}

fn summary(
    cfg: &RunConfig,
    rows: &BTreeMap<Scenario, Row>,
    faults: &Faults,
    verdicts: &[Verdict],
    errors: &[String],
    network: &str,
    took: Duration,
) -> String {
    let mode = match &cfg.mode {
        Mode::Ci => "ci (every scenario once)".to_owned(),
        Mode::Soak(d) => format!("soak {} min", d.as_secs() / 60),
        Mode::Rounds(n) => format!("{n} rounds"),
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "== medpool chaos summary · seed {:#x} · {mode} · {:.0} s ==",
        cfg.seed,
        took.as_secs_f64()
    );
    let _ = writeln!(t, "network faults: {network}");
    let _ = writeln!(
        t,
        "{:<20} {:>5} {:>7} {:>7} {:>9} {:>8} {:>8} {:>7} {:>8}",
        "scenario",
        "runs",
        "faults",
        "placed",
        "survived",
        "refused",
        "unknown",
        "errors",
        "time s"
    );
    let mut total = Row::default();
    for (s, r) in rows {
        if let Some(why) = r.skipped {
            let _ = writeln!(t, "{:<20} NOT RUN: {why}", s.name());
            continue;
        }
        let _ = writeln!(
            t,
            "{:<20} {:>5} {:>7} {:>7} {:>9} {:>8} {:>8} {:>7} {:>8.0}",
            s.name(),
            r.runs,
            r.faults,
            r.placed,
            r.survived,
            r.refused,
            r.unknown,
            r.errors,
            r.secs
        );
        total.runs += r.runs;
        total.faults += r.faults;
        total.placed += r.placed;
        total.survived += r.survived;
        total.refused += r.refused;
        total.unknown += r.unknown;
        total.errors += r.errors;
        total.secs += r.secs;
    }
    let _ = writeln!(
        t,
        "{:<20} {:>5} {:>7} {:>7} {:>9} {:>8} {:>8} {:>7} {:>8.0}",
        "total",
        total.runs,
        total.faults,
        total.placed,
        total.survived,
        total.refused,
        total.unknown,
        total.errors,
        total.secs
    );
    let _ = writeln!(
        t,
        "faults injected: {}",
        faults
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        t,
        "{:<26} {:<8} {:>9}  first violations",
        "invariant", "result", "checked"
    );
    for v in verdicts {
        let first: Vec<&str> = v.violations.iter().take(3).map(String::as_str).collect();
        let _ = writeln!(
            t,
            "{:<26} {:<8} {:>9}  {}",
            v.name,
            if v.held() { "held" } else { "VIOLATED" },
            v.checked,
            first.join(" | ")
        );
    }
    for e in errors {
        let _ = writeln!(t, "scenario error: {e}");
    }
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.held())
        .map(|v| v.name)
        .collect();
    if failed.is_empty() && errors.is_empty() {
        let _ = writeln!(t, "RESULT: every invariant held (seed {:#x})", cfg.seed);
    } else {
        let _ = writeln!(
            t,
            "RESULT: FAILED — invariants violated: [{}], scenario errors: {} — replay with --seed {:#x}",
            failed.join(", "),
            errors.len(),
            cfg.seed
        );
    }
    t
}

/// The dialog records a live node still holds, polled for up to 2 s until none (removals are
/// group-committed, and the last calls' BYEs may have just been answered); "?" if no node answers.
async fn records_left(w: &mut World) -> String {
    let mut last = None;
    for _ in 0..20 {
        let asked = w.any_live();
        last = w.pool.status(asked).await.ok().map(|s| s.dialogs);
        if last == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last.map_or_else(|| "?".to_owned(), |n| n.to_string())
}
