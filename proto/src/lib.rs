//! medpool-proto: the gRPC contracts of medpool.
//!
//! It will own `admin.proto` (package `medpool.admin.v1`, for operators) and `cluster.proto` (node to node
//! only) and the code generated from them. Nothing is generated yet: the admin API and the cluster network
//! arrive with their issues. This crate knows nothing of SIP.
