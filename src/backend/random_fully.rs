//! Whether `MASQUERADE --random-fully` can be used on this node.
//!
//! Upstream kube-proxy v1.37 writes `--random-fully` unconditionally (its iptables wrapper no
//! longer checks the version; older releases added it when `iptables --version` was at least
//! 1.6.2). On a node where the flag is not supported, v1.37's every restore fails. knat writes
//! it whenever it can work, which is every node upstream v1.37 works on, and leaves it out
//! (with a warning) where it cannot:
//!
//! - the iptables binary must know the option: `iptables -j MASQUERADE --help` lists
//!   `--random-fully` (iptables 1.6.2 and later, both front-ends);
//! - the kernel must implement it: `NF_NAT_RANGE_PROTO_RANDOM_FULLY` exists from Linux 3.14
//!   (older kernels accept the flag and ignore it, so a test rule proves nothing; the release,
//!   `/proc/sys/kernel/osrelease`, is what can be checked).
//!
//! The decisions are pure ([`binary_supports`], [`kernel_supports`]); [`detect`] runs the
//! binary and reads the release.

use super::{Iptables, MIN_COMMAND_TIMEOUT, run};

/// The first Linux release with fully random source-port allocation in NAT.
pub const MIN_KERNEL: (u32, u32) = (3, 14);

/// What was found, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomFully {
    /// The iptables binary that was asked.
    pub binary: String,
    /// It lists `--random-fully` among MASQUERADE's options.
    pub binary_supports: bool,
    /// The kernel release (`/proc/sys/kernel/osrelease`), empty when unknown.
    pub kernel: String,
    /// The kernel is at least [`MIN_KERNEL`].
    pub kernel_supports: bool,
}

impl RandomFully {
    /// Whether `--random-fully` is added.
    pub fn usable(&self) -> bool {
        self.binary_supports && self.kernel_supports
    }

    /// Why it is or is not added, in words.
    pub fn reason(&self) -> String {
        match (self.binary_supports, self.kernel_supports) {
            (true, true) => format!(
                "{} supports MASQUERADE --random-fully and kernel {} has it (>= {}.{})",
                self.binary, self.kernel, MIN_KERNEL.0, MIN_KERNEL.1
            ),
            (false, _) => format!(
                "{} does not list --random-fully among MASQUERADE's options (iptables < 1.6.2?); masqueraded connections from many clients may collide on source ports",
                self.binary
            ),
            (true, false) => format!(
                "kernel {:?} predates {}.{}, which added fully random NAT ports",
                self.kernel, MIN_KERNEL.0, MIN_KERNEL.1
            ),
        }
    }
}

/// True when MASQUERADE's help text (`iptables -j MASQUERADE --help`) offers `--random-fully`.
pub fn binary_supports(help: &str) -> bool {
    help.split_whitespace().any(|word| word == "--random-fully")
}

/// True when the kernel release (`6.1.0-18-amd64`, `3.10.0-1160.el7.x86_64`) is at least
/// [`MIN_KERNEL`]; false when it cannot be read.
pub fn kernel_supports(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= MIN_KERNEL,
        _ => false,
    }
}

/// Runs the family's iptables binary for MASQUERADE's help and reads the kernel release.
pub async fn detect(ipt: &Iptables) -> RandomFully {
    let binary = ipt.bins.iptables.clone();
    let help = run(
        &binary,
        &["-j", "MASQUERADE", "--help"],
        None,
        MIN_COMMAND_TIMEOUT,
        &ipt.stop,
    )
    .await
    .map(|out| format!("{}\n{}", out.stdout, out.stderr))
    .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    RandomFully {
        binary_supports: binary_supports(&help),
        kernel_supports: kernel_supports(&kernel),
        binary,
        kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_decides_the_binary() {
        let modern = "MASQUERADE target options:\n --to-ports <port>[-<port>]\n\t\t\t\tPort (range) to map to.\n --random\n\t\t\t\tRandomize source port.\n --random-fully\n\t\t\t\tFully randomize source port.\n";
        assert!(binary_supports(modern));
        let old = "MASQUERADE target options:\n --to-ports <port>[-<port>]\n --random\n\t\t\t\tRandomize source port.\n";
        assert!(!binary_supports(old));
        assert!(!binary_supports(""));
    }

    #[test]
    fn kernel_releases() {
        assert!(kernel_supports("6.18.44-fc-v1300"));
        assert!(kernel_supports("3.14.0"));
        assert!(kernel_supports("4.19.0-27-amd64"));
        assert!(!kernel_supports("3.13.11-ckt39"));
        assert!(!kernel_supports("3.10.0-1160.el7.x86_64"));
        assert!(!kernel_supports(""));
        assert!(!kernel_supports("unknown"));
    }

    #[test]
    fn reasons_name_the_missing_part() {
        let mut found = RandomFully {
            binary: "iptables-nft".into(),
            binary_supports: true,
            kernel: "6.1.0".into(),
            kernel_supports: true,
        };
        assert!(found.usable());
        found.kernel_supports = false;
        assert!(!found.usable());
        assert!(found.reason().contains("kernel"), "{}", found.reason());
        found.binary_supports = false;
        assert!(found.reason().contains("1.6.2"), "{}", found.reason());
    }
}
