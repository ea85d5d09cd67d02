//! The run's seed: `MEDPOOL_SEED` (decimal or 0x-hex) replays a run; otherwise a random one. It is
//! printed first thing, so a failing run can be replayed.

/// The seed of this run, printed to stderr with `test` as the label.
pub fn seed(test: &str) -> u64 {
    let given = std::env::var("MEDPOOL_SEED").ok().and_then(|s| {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    });
    let seed = given.unwrap_or_else(rand::random);
    eprintln!("[{test}] seed {seed:#x} (replay with MEDPOOL_SEED={seed:#x})");
    seed
}
