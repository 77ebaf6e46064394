//! The lab's echo server and client probe, on plain `std::net` sockets with timeouts.
//!
//! Every pod runs one echo server (`knat lab-echo`) on TCP and UDP. Each connection or datagram
//! gets one JSON line back: the pod's name, the source address and port the server saw and the
//! address it was reached on, e.g.
//! `{"pod":"web-1","proto":"tcp","saw":"203.0.113.10:40000","local":"10.244.1.11:8080"}`.
//! This is what lets a test tell "client address preserved" from "masqueraded".
//!
//! The probe (`knat lab-probe`) connects (or sends a datagram), and reports one of
//! [`ProbeResult`]: reached (with the reply), refused (a REJECT or a closed port), timed out
//! (a DROP) or failed (anything else, such as no route). Both run inside namespaces through
//! `ip netns exec NS <knat> ...`; the lab starts and parses them.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LabError;
use super::scenario::Proto;

/// The line an echo server prints on stdout once every socket is bound.
pub const READY_LINE: &str = "ready";
/// Largest reply the probe reads; replies are one short JSON line.
const MAX_REPLY: u64 = 4096;
/// How long the server waits to write a reply before giving up on a connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept`/`recv`, so a persistent error cannot spin a core.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Most attempts one probe run makes.
pub const MAX_PROBE_COUNT: u32 = 1000;

/// What an echo server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    /// The pod (server) name.
    pub pod: String,
    /// `tcp` or `udp`.
    pub proto: String,
    /// The peer address as the server saw it (after any NAT on the way).
    pub saw: SocketAddr,
    /// The local address the connection or datagram arrived on.
    pub local: SocketAddr,
}

/// The outcome of one probe attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ProbeResult {
    /// An echo server answered.
    Reached { reply: EchoReply },
    /// The connection was refused: a TCP RST or an ICMP port unreachable (iptables REJECT).
    Refused,
    /// Nothing came back before the timeout (iptables DROP).
    TimedOut,
    /// Anything else (no route, host unreachable, a reply that is not an echo reply).
    Failed { error: String },
}

impl ProbeResult {
    /// The reply, when an echo server answered.
    pub fn reply(&self) -> Option<&EchoReply> {
        match self {
            ProbeResult::Reached { reply } => Some(reply),
            _ => None,
        }
    }

    /// The pod that answered, if one did.
    pub fn pod(&self) -> Option<&str> {
        self.reply().map(|r| r.pod.as_str())
    }

    /// A short human description: `reached web-1`, `dropped (timeout)`, `refused`, `failed: ...`.
    pub fn describe(&self) -> String {
        match self {
            ProbeResult::Reached { reply } => format!("reached {}", reply.pod),
            ProbeResult::Refused => "refused".to_string(),
            ProbeResult::TimedOut => "dropped (timeout)".to_string(),
            ProbeResult::Failed { error } => format!("failed: {error}"),
        }
    }
}

/// Arguments of `knat lab-echo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoArgs {
    /// `--name NAME`: the pod name put into every reply.
    pub name: String,
    /// `--listen ADDR:PORT` (repeatable): serve TCP and UDP on each address.
    pub listen: Vec<SocketAddr>,
    /// `--exit-on-stdin-eof`: exit when standard input closes, so the server dies with the lab
    /// that started it even if that lab is killed.
    pub exit_on_stdin_eof: bool,
}

/// Arguments of `knat lab-probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeArgs {
    /// `--connect ADDR:PORT`.
    pub connect: SocketAddr,
    /// `--udp`: send a datagram instead of opening a TCP connection.
    pub udp: bool,
    /// `--timeout-ms N` (default 1000): per attempt.
    pub timeout: Duration,
    /// `--count N` (default 1): sequential attempts, each from a fresh source port.
    pub count: u32,
}

impl ProbeArgs {
    /// The protocol the probe uses.
    pub fn proto(&self) -> Proto {
        if self.udp { Proto::Udp } else { Proto::Tcp }
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

/// Turns an IPv4-mapped IPv6 socket address into the IPv4 one it stands for.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn reply_line(name: &str, proto: Proto, saw: SocketAddr, local: SocketAddr) -> String {
    let reply = EchoReply {
        pod: name.to_string(),
        proto: proto.to_string(),
        saw: canonical(saw),
        local: canonical(local),
    };
    // Serialising a struct of strings and addresses cannot fail; fall back to an empty object.
    let mut line = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".to_string());
    line.push('\n');
    line
}

/// A bound echo server: TCP listeners and UDP sockets on every address, not serving yet.
#[derive(Debug)]
pub struct EchoServer {
    name: String,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl EchoServer {
    /// Binds TCP and UDP on every address.
    pub fn bind(name: &str, listen: &[SocketAddr]) -> Result<EchoServer, LabError> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for addr in listen {
            tcp.push(TcpListener::bind(addr).map_err(io_error(format!("bind tcp {addr}")))?);
            udp.push(UdpSocket::bind(addr).map_err(io_error(format!("bind udp {addr}")))?);
        }
        Ok(EchoServer {
            name: name.to_string(),
            tcp,
            udp,
        })
    }

    /// The bound addresses, TCP first then UDP (useful when binding port 0).
    pub fn local_addrs(&self) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), LabError> {
        let tcp = self
            .tcp
            .iter()
            .map(|l| l.local_addr().map_err(io_error("tcp local address")))
            .collect::<Result<_, _>>()?;
        let udp = self
            .udp
            .iter()
            .map(|s| s.local_addr().map_err(io_error("udp local address")))
            .collect::<Result<_, _>>()?;
        Ok((tcp, udp))
    }

    /// Serves on background threads, forever (the threads end with the process).
    pub fn spawn(self) {
        for listener in self.tcp {
            let name = self.name.clone();
            thread::spawn(move || serve_tcp(&name, &listener));
        }
        for socket in self.udp {
            let name = self.name.clone();
            thread::spawn(move || serve_udp(&name, &socket));
        }
    }
}

fn serve_tcp(name: &str, listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let local = stream.local_addr().unwrap_or(peer);
                let line = reply_line(name, Proto::Tcp, peer, local);
                let written = stream
                    .set_write_timeout(Some(WRITE_TIMEOUT))
                    .and_then(|()| stream.write_all(line.as_bytes()));
                if let Err(e) = written {
                    eprintln!("lab-echo {name}: reply to {peer} failed: {e}");
                }
            }
            Err(e) => {
                eprintln!("lab-echo {name}: accept failed: {e}");
                thread::sleep(ERROR_BACKOFF);
            }
        }
    }
}

fn serve_udp(name: &str, socket: &UdpSocket) {
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(e) => {
            eprintln!("lab-echo {name}: udp socket has no address: {e}");
            return;
        }
    };
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let line = reply_line(name, Proto::Udp, peer, local);
                if let Err(e) = socket.send_to(line.as_bytes(), peer) {
                    eprintln!("lab-echo {name}: udp reply to {peer} failed: {e}");
                }
            }
            Err(e) => {
                eprintln!("lab-echo {name}: udp receive failed: {e}");
                thread::sleep(ERROR_BACKOFF);
            }
        }
    }
}

/// `knat lab-echo`: binds, prints [`READY_LINE`] to `ready`, then serves until standard input
/// closes (with `exit_on_stdin_eof`) or forever.
pub fn run_echo_server(args: &EchoArgs, ready: &mut impl Write) -> Result<(), LabError> {
    if args.listen.is_empty() {
        return Err(LabError::Usage(
            "lab-echo needs at least one --listen address".into(),
        ));
    }
    let server = EchoServer::bind(&args.name, &args.listen)?;
    server.spawn();
    writeln!(ready, "{READY_LINE}")
        .and_then(|()| ready.flush())
        .map_err(io_error("write the ready line"))?;
    if args.exit_on_stdin_eof {
        let mut sink = Vec::new();
        let stdin = io::stdin();
        let mut lock = stdin.lock();
        loop {
            sink.clear();
            match lock.read_until(b'\n', &mut sink) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }
    loop {
        thread::park();
    }
}

fn classify(error: &io::Error) -> ProbeResult {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ProbeResult::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeResult::TimedOut,
        _ => ProbeResult::Failed {
            error: error.to_string(),
        },
    }
}

fn parse_reply(bytes: &[u8]) -> ProbeResult {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next().unwrap_or_default();
    match serde_json::from_str::<EchoReply>(line) {
        Ok(reply) => ProbeResult::Reached { reply },
        Err(e) => ProbeResult::Failed {
            error: format!("not an echo reply ({e}): {line:?}"),
        },
    }
}

fn probe_tcp(target: SocketAddr, timeout: Duration) -> ProbeResult {
    let stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(stream) => stream,
        Err(e) => return classify(&e),
    };
    if let Err(e) = stream.set_read_timeout(Some(timeout)) {
        return ProbeResult::Failed {
            error: e.to_string(),
        };
    }
    let mut bytes = Vec::new();
    match stream.take(MAX_REPLY).read_to_end(&mut bytes) {
        Ok(_) => parse_reply(&bytes),
        Err(e) if !bytes.is_empty() && e.kind() != io::ErrorKind::ConnectionRefused => {
            parse_reply(&bytes)
        }
        Err(e) => ProbeResult::Failed {
            error: format!("connected but no reply: {e}"),
        },
    }
}

fn probe_udp(target: SocketAddr, timeout: Duration) -> ProbeResult {
    let any: SocketAddr = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let attempt = || -> io::Result<Vec<u8>> {
        let socket = UdpSocket::bind(any)?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send(b"probe\n")?;
        let mut buf = vec![0u8; 1500];
        let n = socket.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    };
    match attempt() {
        Ok(bytes) => parse_reply(&bytes),
        Err(e) => classify(&e),
    }
}

/// One probe attempt.
pub fn probe(target: SocketAddr, proto: Proto, timeout: Duration) -> ProbeResult {
    match proto {
        Proto::Tcp => probe_tcp(target, timeout),
        Proto::Udp => probe_udp(target, timeout),
    }
}

/// `knat lab-probe`: makes `count` attempts and prints one JSON [`ProbeResult`] line each.
pub fn run_probe(args: &ProbeArgs, out: &mut impl Write) -> Result<(), LabError> {
    if args.count == 0 || args.count > MAX_PROBE_COUNT {
        return Err(LabError::Usage(format!(
            "--count must be between 1 and {MAX_PROBE_COUNT}"
        )));
    }
    if args.timeout.is_zero() {
        return Err(LabError::Usage("--timeout-ms must be positive".into()));
    }
    for _ in 0..args.count {
        let result = probe(args.connect, args.proto(), args.timeout);
        let line = serde_json::to_string(&result).map_err(|e| LabError::ProbeOutput {
            output: format!("{result:?}"),
            detail: e.to_string(),
        })?;
        writeln!(out, "{line}").map_err(io_error("write the probe result"))?;
    }
    out.flush().map_err(io_error("flush the probe result"))
}

/// Parses the lines [`run_probe`] prints.
pub fn parse_probe_output(output: &str) -> Result<Vec<ProbeResult>, LabError> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|e| LabError::ProbeOutput {
                output: line.to_string(),
                detail: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn loopback_server(name: &str) -> (SocketAddr, SocketAddr) {
        let server = match EchoServer::bind(name, &[SocketAddr::from(([127, 0, 0, 1], 0))]) {
            Ok(server) => server,
            Err(e) => panic!("bind failed: {e}"),
        };
        let (tcp, udp) = match server.local_addrs() {
            Ok(addrs) => addrs,
            Err(e) => panic!("no local address: {e}"),
        };
        server.spawn();
        (tcp[0], udp[0])
    }

    #[test]
    fn tcp_probe_reaches_the_echo_server_and_sees_addresses() {
        let (tcp, _) = loopback_server("web-1");
        let result = probe(tcp, Proto::Tcp, TIMEOUT);
        let reply = match result.reply() {
            Some(reply) => reply.clone(),
            None => panic!("expected a reply, got {result:?}"),
        };
        assert_eq!(reply.pod, "web-1");
        assert_eq!(reply.proto, "tcp");
        assert_eq!(reply.local, tcp);
        assert_eq!(reply.saw.ip(), tcp.ip());
        assert_ne!(reply.saw.port(), tcp.port());
    }

    #[test]
    fn udp_probe_reaches_the_echo_server() {
        let (_, udp) = loopback_server("dns-1");
        let result = probe(udp, Proto::Udp, TIMEOUT);
        assert_eq!(result.pod(), Some("dns-1"));
        assert_eq!(result.reply().map(|r| r.local), Some(udp));
    }

    #[test]
    fn closed_ports_are_refused() {
        // Bind and drop to find a port that is (very likely) closed.
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => panic!("bind failed: {e}"),
        };
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(probe(target, Proto::Tcp, TIMEOUT), ProbeResult::Refused);
        assert_eq!(probe(target, Proto::Udp, TIMEOUT), ProbeResult::Refused);
    }

    #[test]
    fn probe_output_round_trips() {
        let (tcp, _) = loopback_server("web-2");
        let args = ProbeArgs {
            connect: tcp,
            udp: false,
            timeout: TIMEOUT,
            count: 3,
        };
        let mut out = Vec::new();
        if let Err(e) = run_probe(&args, &mut out) {
            panic!("probe failed: {e}");
        }
        let text = String::from_utf8_lossy(&out);
        let results = match parse_probe_output(&text) {
            Ok(results) => results,
            Err(e) => panic!("unparsable output: {e}"),
        };
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| r.pod() == Some("web-2")));
        let round = parse_probe_output("{\"result\":\"timed_out\"}\n{\"result\":\"refused\"}\n");
        assert_eq!(
            round.ok(),
            Some(vec![ProbeResult::TimedOut, ProbeResult::Refused])
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let args = ProbeArgs {
            connect: SocketAddr::from(([127, 0, 0, 1], 1)),
            udp: false,
            timeout: TIMEOUT,
            count: 0,
        };
        assert!(matches!(
            run_probe(&args, &mut Vec::new()),
            Err(LabError::Usage(_))
        ));
        let echo = EchoArgs {
            name: "x".into(),
            listen: vec![],
            exit_on_stdin_eof: false,
        };
        assert!(matches!(
            run_echo_server(&echo, &mut Vec::new()),
            Err(LabError::Usage(_))
        ));
    }

    #[test]
    fn mapped_addresses_are_reported_as_ipv4() {
        let mapped: SocketAddr = match "[::ffff:10.0.0.1]:80".parse() {
            Ok(addr) => addr,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(canonical(mapped), SocketAddr::from(([10, 0, 0, 1], 80)));
    }
}
