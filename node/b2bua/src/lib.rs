//! medpool-b2bua: the back-to-back user agent of one node.
pub mod config;
pub mod health;
pub mod routing;
pub mod translate;
