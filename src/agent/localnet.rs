//! `net.ipv4.conf.all.route_localnet`, without which localhost NodePorts cannot work.
//!
//! A NodePort on 127.0.0.1 is DNATed to a pod address; the kernel routes a packet whose source
//! or destination is in 127.0.0.0/8 off the loopback device only when `route_localnet` is 1,
//! else it drops it (the connection times out). Upstream kube-proxy sets it at start and
//! refuses to start when it cannot. knat sets it when it can ([`ensure`]); when it cannot (a
//! non-privileged pod sees /proc/sys read-only) it warns with the fix and programs no
//! 127.0.0.0/8 NodePort rule, since rules that cannot work only hide the problem. The shipped
//! DaemonSet sets it in a privileged init container (`knat node-setup`), so the agent itself
//! stays unprivileged.
//!
//! The decision is pure over a [`Sysctl`]; [`ProcSys`] is the real file.

use std::io;
use std::path::PathBuf;

/// The sysctl's name.
pub const SYSCTL: &str = "net.ipv4.conf.all.route_localnet";

/// Its file (in the network namespace of the process that opens it).
pub const PATH: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// The fix, repeated in every message about it.
pub const FIX: &str = "run the DaemonSet's init container (`knat node-setup`, privileged, \
     host network) or `sysctl -w net.ipv4.conf.all.route_localnet=1` on the node, then restart \
     knat; --localhost-nodeports=false turns localhost NodePorts off without this warning";

/// Reading and writing one sysctl value.
pub trait Sysctl {
    fn read(&self) -> io::Result<String>;
    fn write(&self, value: &str) -> io::Result<()>;
}

/// A sysctl file under /proc/sys.
#[derive(Debug, Clone)]
pub struct ProcSys(pub PathBuf);

impl Default for ProcSys {
    /// `net.ipv4.conf.all.route_localnet`.
    fn default() -> Self {
        ProcSys(PathBuf::from(PATH))
    }
}

impl Sysctl for ProcSys {
    fn read(&self) -> io::Result<String> {
        std::fs::read_to_string(&self.0)
    }

    fn write(&self, value: &str) -> io::Result<()> {
        std::fs::write(&self.0, value)
    }
}

/// The state of `route_localnet` after [`ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Localnet {
    /// It was 1 already.
    AlreadyOn,
    /// It was `was`; knat set it to 1.
    Set { was: String },
    /// It is not 1 and could not be set (the reason says why): localhost NodePorts cannot work.
    Unavailable { reason: String },
}

/// Reads the sysctl and sets it to 1 when it is not; verifies the write.
pub fn ensure(sysctl: &impl Sysctl) -> Localnet {
    let current = match sysctl.read() {
        Ok(value) => value.trim().to_string(),
        Err(e) => {
            return Localnet::Unavailable {
                reason: format!("cannot read {PATH}: {e}"),
            };
        }
    };
    if current == "1" {
        return Localnet::AlreadyOn;
    }
    if let Err(e) = sysctl.write("1") {
        return Localnet::Unavailable {
            reason: format!("{SYSCTL} is {current} and cannot be set: write {PATH}: {e}"),
        };
    }
    match sysctl.read().map(|v| v.trim().to_string()) {
        Ok(now) if now == "1" => Localnet::Set { was: current },
        Ok(now) => Localnet::Unavailable {
            reason: format!("{SYSCTL} was {current}, 1 was written, and it reads {now}"),
        },
        Err(e) => Localnet::Unavailable {
            reason: format!(
                "{SYSCTL} was {current}, 1 was written, and {PATH} cannot be read back: {e}"
            ),
        },
    }
}

impl Localnet {
    /// True when localhost NodePort rules can work.
    pub fn usable(&self) -> bool {
        !matches!(self, Localnet::Unavailable { .. })
    }

    /// The log line `knat run` prints (info when usable, a warning otherwise).
    pub fn message(&self) -> String {
        match self {
            Localnet::AlreadyOn => {
                format!("{SYSCTL} is 1: NodePorts are served on 127.0.0.1 (--localhost-nodeports)")
            }
            Localnet::Set { was } => format!(
                "{SYSCTL} was {was}; set it to 1 so NodePorts are served on 127.0.0.1 \
                 (--localhost-nodeports)"
            ),
            Localnet::Unavailable { reason } => format!(
                "localhost NodePorts are off: {reason}; without {SYSCTL}=1 the kernel drops \
                 packets DNATed from 127.0.0.1, so no NodePort rule for 127.0.0.0/8 is written \
                 (knat_localhost_nodeports 0); fix: {FIX}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// An in-memory sysctl; `None` errors mean the operation succeeds.
    struct Fake {
        value: RefCell<String>,
        read_error: Option<io::ErrorKind>,
        write_error: Option<io::ErrorKind>,
        /// The kernel ignores writes (the value stays).
        sticky: bool,
        writes: RefCell<Vec<String>>,
    }

    fn fake(value: &str) -> Fake {
        Fake {
            value: RefCell::new(format!("{value}\n")),
            read_error: None,
            write_error: None,
            sticky: false,
            writes: RefCell::new(Vec::new()),
        }
    }

    impl Sysctl for Fake {
        fn read(&self) -> io::Result<String> {
            match self.read_error {
                Some(kind) => Err(kind.into()),
                None => Ok(self.value.borrow().clone()),
            }
        }

        fn write(&self, value: &str) -> io::Result<()> {
            self.writes.borrow_mut().push(value.to_string());
            if let Some(kind) = self.write_error {
                return Err(kind.into());
            }
            if !self.sticky {
                *self.value.borrow_mut() = format!("{value}\n");
            }
            Ok(())
        }
    }

    #[test]
    fn already_on_is_left_alone() {
        let s = fake("1");
        assert_eq!(ensure(&s), Localnet::AlreadyOn);
        assert!(s.writes.borrow().is_empty());
        assert!(ensure(&s).usable());
        assert_eq!(
            ensure(&s).message(),
            "net.ipv4.conf.all.route_localnet is 1: NodePorts are served on 127.0.0.1 (--localhost-nodeports)"
        );
    }

    #[test]
    fn zero_is_set_to_one() {
        let s = fake("0");
        let got = ensure(&s);
        assert_eq!(got, Localnet::Set { was: "0".into() });
        assert_eq!(*s.writes.borrow(), vec!["1".to_string()]);
        assert_eq!(s.value.borrow().trim(), "1");
        assert!(got.usable());
        assert!(
            got.message()
                .starts_with("net.ipv4.conf.all.route_localnet was 0; set it to 1")
        );
    }

    #[test]
    fn read_only_proc_sys_turns_localhost_nodeports_off_with_the_fix() {
        let mut s = fake("0");
        s.write_error = Some(io::ErrorKind::ReadOnlyFilesystem);
        let got = ensure(&s);
        assert!(!got.usable());
        let msg = got.message();
        assert!(
            msg.starts_with("localhost NodePorts are off: net.ipv4.conf.all.route_localnet is 0 and cannot be set: write /proc/sys/net/ipv4/conf/all/route_localnet: read-only filesystem"),
            "{msg}"
        );
        assert!(
            msg.contains("no NodePort rule for 127.0.0.0/8 is written"),
            "{msg}"
        );
        assert!(msg.ends_with(FIX), "{msg}");

        s.write_error = Some(io::ErrorKind::PermissionDenied);
        assert!(!ensure(&s).usable());
    }

    #[test]
    fn unreadable_or_ignored_writes_are_unavailable() {
        let mut s = fake("0");
        s.read_error = Some(io::ErrorKind::NotFound);
        let got = ensure(&s);
        assert!(!got.usable());
        assert!(s.writes.borrow().is_empty(), "nothing is written blind");
        assert!(
            got.message()
                .contains("cannot read /proc/sys/net/ipv4/conf/all/route_localnet")
        );

        let mut s = fake("0");
        s.sticky = true;
        assert_eq!(
            ensure(&s),
            Localnet::Unavailable {
                reason: "net.ipv4.conf.all.route_localnet was 0, 1 was written, and it reads 0"
                    .into()
            }
        );
    }
}
