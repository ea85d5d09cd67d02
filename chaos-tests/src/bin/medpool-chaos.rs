//! `medpool-chaos`: the chaos suite's runner (see the crate docs and chaos-tests/README.md).
//!
//! ```text
//! medpool-chaos [--ci | --soak 30m | --rounds N] [--seed S] [--scenario a,b,...] [--net N] [--no-netns]
//! ```
//! As root with a working `ip netns`, it re-executes itself inside a network namespace it creates
//! and deletes. Exit status: 0 every invariant held, 1 a violation or scenario error, 2 bad usage.

use std::time::Duration;

use medpool_chaos_tests::netns::{Namespace, inside};
use medpool_chaos_tests::pool::Net;
use medpool_chaos_tests::runner::{Mode, RunConfig, run};
use medpool_chaos_tests::scenarios::Scenario;

const USAGE: &str = "usage: medpool-chaos [--ci | --soak <30m|90s|2h> | --rounds <n>] [--seed <n|0xhex>] \
[--scenario <name,...>] [--net <N: use 127.0.N.x>] [--no-netns]\nscenarios: ";

fn usage(why: &str) -> ! {
    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
    eprintln!("medpool-chaos: {why}\n{USAGE}{}", names.join(", "));
    std::process::exit(2);
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().ok()?;
    match unit {
        "s" => Some(Duration::from_secs(n)),
        "m" | "" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn main() {
    let mut mode = Mode::Ci;
    let mut seed: Option<u64> = std::env::var("MEDPOOL_SEED")
        .ok()
        .and_then(|s| parse_seed(&s));
    let mut scenarios: Vec<Scenario> = Scenario::ALL.to_vec();
    let mut net = Net(74);
    let mut use_netns = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--ci" => mode = Mode::Ci,
            "--soak" => {
                let v = value("--soak");
                mode = Mode::Soak(
                    parse_duration(&v).unwrap_or_else(|| usage(&format!("bad duration {v:?}"))),
                );
            }
            "--rounds" => {
                let v = value("--rounds");
                mode = Mode::Rounds(
                    v.parse()
                        .unwrap_or_else(|_| usage(&format!("bad round count {v:?}"))),
                );
            }
            "--seed" => {
                let v = value("--seed");
                seed = Some(parse_seed(&v).unwrap_or_else(|| usage(&format!("bad seed {v:?}"))));
            }
            "--scenario" => {
                let v = value("--scenario");
                scenarios = v
                    .split(',')
                    .map(|n| {
                        Scenario::parse(n.trim())
                            .unwrap_or_else(|| usage(&format!("no scenario {n:?}")))
                    })
                    .collect();
            }
            "--net" => {
                let v = value("--net");
                net = Net(v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --net {v:?}"))));
            }
            "--no-netns" => use_netns = false,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let seed = seed.unwrap_or_else(rand::random);
    let netns = inside();
    if netns.is_none() && use_netns {
        if is_root() {
            match Namespace::create() {
                Ok(ns) => {
                    // Same arguments and the same seed, inside the namespace.
                    let status = reexec_with_seed(&ns, &format!("{seed:#x}"));
                    drop(ns);
                    std::process::exit(status);
                }
                Err(e) => eprintln!("network namespace unavailable ({e}): running without one"),
            }
        } else {
            eprintln!("not root: running without a network namespace");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("medpool-chaos: no tokio runtime: {e}");
            std::process::exit(1)
        });
    let report = runtime.block_on(run(RunConfig {
        seed,
        mode,
        scenarios,
        net,
        netns,
    }));
    println!("{}", report.table);
    std::process::exit(if report.passed { 0 } else { 1 });
}

fn reexec_with_seed(ns: &Namespace, seed: &str) -> i32 {
    match ns.reexec(seed) {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("medpool-chaos: could not run inside {}: {e}", ns.name);
            1
        }
    }
}
