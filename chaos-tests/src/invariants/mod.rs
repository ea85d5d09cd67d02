//! The invariants, one a file. Each reads the [`Observations`] of a whole run —
//! the callers' ledgers, the gateways' counts, the nodes' own audit reports, the sampler's outside
//! view and the convergence checks after each healing — and returns a [`Verdict`].
//!
//! | file | invariant |
//! |---|---|
//! | [`no_call_lost`] | every call up before (or during) a fault can be re-INVITEd and hung up after it |
//! | [`no_pool_teardown`] | the pool never ends a call on its own |
//! | [`single_actor`] | at most one node acts for a shard at any instant |
//! | [`one_leader_per_term`] | one leader per Raft term |
//! | [`config_grows`] | configuration versions only grow on every node |
//! | [`converges`] | after healing, every shard owned, every node active, new calls served |
//! | [`media_resumes`] | every surviving call's RTP flows both ways again within its shard's failover + 1 s; no packet reaches another call |

pub mod config_grows;
pub mod converges;
pub mod media_resumes;
pub mod no_call_lost;
pub mod no_pool_teardown;
pub mod one_leader_per_term;
pub mod single_actor;

use medpool_simpeer::CallRecord;
use medpool_simpeer::rtp::LegStats;

use crate::audit::Event;
use crate::observe::Sample;

/// One call and the scenario that placed it.
#[derive(Debug, Clone)]
pub struct CallFate {
    /// The scenario (and round) that placed it.
    pub scenario: String,
    /// What the caller saw.
    pub record: CallRecord,
    /// What the call's RTP leg at the caller saw (`None`: the call had none).
    pub media: Option<LegStats>,
}

/// What a scenario's healing led to.
#[derive(Debug, Clone)]
pub struct Convergence {
    /// The scenario (and round).
    pub scenario: String,
    /// `Err`: why the pool did not converge in time.
    pub converged: Result<(), String>,
    /// Fresh calls placed after healing at the normal rate.
    pub placed: usize,
    /// Of those, answered, re-INVITEd and hung up with 2xx each.
    pub completed: usize,
    /// Configuration versions per node once converged.
    pub config_versions: Vec<(u64, Option<u64>)>,
}

/// Everything a run observed.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Every call placed.
    pub calls: Vec<CallFate>,
    /// BYEs the gateways received.
    pub gateway_byes: u64,
    /// Calls (B-legs) the gateways answered.
    pub gateway_calls: u64,
    /// New in-dialog requests the gateways received out of CSeq order (two nodes acting).
    pub gateway_cseq_out_of_order: u64,
    /// The first of those, described (gateway, Call-ID, the two requests and their sources).
    pub gateway_cseq_disorders: Vec<String>,
    /// B-legs still up at the gateways when the run ended (every call was hung up by then).
    pub gateway_legs_left: Vec<String>,
    /// The nodes' audit events, by node id.
    pub audit: Vec<Vec<Event>>,
    /// The sampler's view.
    pub samples: Vec<Sample>,
    /// One per healing.
    pub convergence: Vec<Convergence>,
    /// When observation ended (Unix µs).
    pub end_us: u64,
    /// The pool's shard count (to find a call's shard).
    pub shards: u16,
    /// The gateways' RTP legs, summed.
    pub gateway_media: LegStats,
}

/// One invariant's result.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Its name.
    pub name: &'static str,
    /// How many things were checked (calls, shard intervals, terms, ...).
    pub checked: usize,
    /// The violations (empty: it held), the first few described.
    pub violations: Vec<String>,
}

impl Verdict {
    /// Whether it held.
    pub fn held(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Every invariant, in table order.
pub fn check_all(obs: &Observations) -> Vec<Verdict> {
    vec![
        no_call_lost::check(obs),
        no_pool_teardown::check(obs),
        single_actor::check(obs),
        one_leader_per_term::check(obs),
        config_grows::check(obs),
        converges::check(obs),
        media_resumes::check(obs),
    ]
}
