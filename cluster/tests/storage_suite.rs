//! openraft's storage test suite against the redb store, each test in a fresh data directory.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::io;

use medpool_cluster::typ::StorageError;
use medpool_cluster::{LogStore, StateMachineStore, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{ErrorSubject, ErrorVerb};
use tempfile::TempDir;

struct RedbStoreBuilder;

fn storage_error(e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(storage_error)?;
        let (log, sm) =
            medpool_cluster::open(dir.path()).map_err(|e| storage_error(io::Error::from(e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    TypeConfig::run(async {
        Suite::test_all(RedbStoreBuilder).await.unwrap();
    });
}
