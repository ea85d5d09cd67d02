//! [`SharedTrunk`]: one trunk of a configuration, held through the configuration it belongs to
//! rather than copied. A call keeps the inbound trunk it came in on for its whole life (calls in
//! progress keep the settings they started with across a reload); a copy of a [`Trunk`] is
//! ~400 B per call, a shared one a pointer and an index.

use std::ops::Deref;
use std::sync::Arc;

use super::model::{PoolConfig, Trunk};

/// A trunk of one configuration version, kept alive with that version (a reload makes a new
/// [`PoolConfig`]; the old one lives on while a call holds one of its trunks).
#[derive(Clone, Debug)]
pub struct SharedTrunk {
    config: Arc<PoolConfig>,
    index: usize,
}

impl SharedTrunk {
    /// `trunk`, which must be one of `config`'s trunks (a reference into `config.trunks`, or
    /// the trunk of that name); `None` when `config` has no such trunk.
    pub fn of(config: &Arc<PoolConfig>, trunk: &Trunk) -> Option<SharedTrunk> {
        let index = config
            .trunks
            .iter()
            .position(|t| std::ptr::eq(t, trunk))
            .or_else(|| config.trunks.iter().position(|t| t.name == trunk.name))?;
        Some(SharedTrunk {
            config: config.clone(),
            index,
        })
    }

    /// The trunk of `config` named `name`.
    pub fn named(config: &Arc<PoolConfig>, name: &str) -> Option<SharedTrunk> {
        let index = config.trunks.iter().position(|t| t.name == name)?;
        Some(SharedTrunk {
            config: config.clone(),
            index,
        })
    }
}

impl Deref for SharedTrunk {
    type Target = Trunk;

    fn deref(&self) -> &Trunk {
        &self.config.trunks[self.index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Arc<PoolConfig> {
        let toml = r#"
            [[trunk]]
            name = "pbx"
            address = "192.0.2.1"
            side = "internal"
            [[trunk]]
            name = "gw1"
            address = "192.0.2.21"
            side = "gateway"
            [[route]]
            name = "all"
            pattern = ".*"
            trunks = ["gw1"]
        "#;
        Arc::new(PoolConfig::from_toml_str(toml, "test.toml").expect("valid configuration"))
    }

    #[test]
    fn a_shared_trunk_reads_the_trunk_it_was_made_from() {
        let config = config();
        let gw = SharedTrunk::of(&config, &config.trunks[1]).expect("a trunk of the config");
        assert_eq!(gw.name, "gw1");
        assert_eq!(*gw, config.trunks[1]);
        let pbx = SharedTrunk::named(&config, "pbx").expect("named trunk");
        assert_eq!(pbx.name, "pbx");
        assert!(SharedTrunk::named(&config, "nobody").is_none());
    }

    #[test]
    fn a_shared_trunk_keeps_its_configuration_version_alive() {
        let config = config();
        let version = Arc::downgrade(&config);
        let pbx = SharedTrunk::named(&config, "pbx").expect("named trunk");
        // The configuration is replaced (its other holder lets it go): the call's trunk still
        // reads the version it started with, which lives as long as the call holds it.
        drop(config);
        assert_eq!(pbx.name, "pbx");
        assert!(version.upgrade().is_some());
        drop(pbx);
        assert!(version.upgrade().is_none());
    }

    #[test]
    fn a_shared_trunk_is_far_smaller_than_a_copy() {
        assert!(size_of::<SharedTrunk>() <= 16);
        assert!(size_of::<Trunk>() > 10 * size_of::<SharedTrunk>());
    }
}
