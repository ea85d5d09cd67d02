//! medpool-b2bua: the back-to-back user agent of one node.
