//! medpool-cluster
