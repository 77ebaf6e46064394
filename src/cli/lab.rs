//! `knat demo` and the hidden lab helpers (`lab-echo`, `lab-probe`, `lab-invalid`) that run inside the
//! network namespaces of the demo and of the real-kernel tests.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// iptables backend for the nodes: nft or legacy (default: nft if installed, else legacy).
    #[arg(long)]
    pub backend: Option<knat::lab::Backend>,
}

#[derive(clap::Args, Debug)]
pub struct LabEchoArgs {
    /// Pod name put into every reply.
    #[arg(long)]
    pub name: String,
    /// Address to serve TCP and UDP on (repeatable).
    #[arg(long, required = true)]
    pub listen: Vec<std::net::SocketAddr>,
    /// Exit when standard input closes (the lab that started the server is gone).
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
}

#[derive(clap::Args, Debug)]
pub struct LabProbeArgs {
    /// Target ip:port ([v6]:port for IPv6).
    #[arg(long)]
    pub connect: std::net::SocketAddr,
    /// Send a UDP datagram instead of opening a TCP connection.
    #[arg(long)]
    pub udp: bool,
    /// Per-attempt timeout.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Sequential attempts, each from a new source port.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
}

#[derive(clap::Args, Debug)]
pub struct LabInvalidArgs {
    /// Where to send unsolicited ICMP echo replies (conntrack: INVALID).
    #[arg(long)]
    pub to: std::net::IpAddr,
    #[arg(long, default_value_t = 1)]
    pub count: u16,
}

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let report = knat::lab::run_demo(&exe, args.backend, &mut std::io::stdout().lock())?;
    Ok(if report.all_as_expected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn lab_echo(args: LabEchoArgs) -> anyhow::Result<ExitCode> {
    let args = knat::lab::EchoArgs {
        name: args.name,
        listen: args.listen,
        exit_on_stdin_eof: args.exit_on_stdin_eof,
    };
    knat::lab::run_echo_server(&args, &mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

pub fn lab_probe(args: LabProbeArgs) -> anyhow::Result<ExitCode> {
    let args = knat::lab::ProbeArgs {
        connect: args.connect,
        udp: args.udp,
        timeout: std::time::Duration::from_millis(args.timeout_ms),
        count: args.count,
    };
    knat::lab::run_probe(&args, &mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

pub fn lab_invalid(args: LabInvalidArgs) -> anyhow::Result<ExitCode> {
    knat::lab::invalid::send_unsolicited_echo_replies(args.to, args.count)?;
    Ok(ExitCode::SUCCESS)
}
