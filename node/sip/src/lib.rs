//! medpool-sip
