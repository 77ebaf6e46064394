//! From a snapshot to iptables rules: chain naming, typed rules, compilation, planning, rendering.
