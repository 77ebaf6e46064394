//! `iptables-save` / `iptables-restore` text: parsing, a model of restore semantics, and the
//! packet tracer behind `knat trace`.
