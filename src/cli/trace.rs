//! `knat trace`: follow one new connection through an iptables-save dump.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use knat::dump::{TraceRequest, format_text, parse, trace};
use knat::model::Protocol;

/// Transport protocols `--proto` accepts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Sctp,
}

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputArg {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// An `iptables-save` (or `ip6tables-save`) dump, or `-` for standard input.
    #[arg(long)]
    pub dump: String,
    /// Source address of the packet.
    #[arg(long)]
    pub src: IpAddr,
    /// Destination `ip:port` (`[v6]:port` for IPv6).
    #[arg(long)]
    pub dst: SocketAddr,
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: ProtoArg,
    /// The packet is generated on the node itself (nat OUTPUT, filter OUTPUT) instead of
    /// arriving from the network (nat PREROUTING, then filter INPUT or FORWARD).
    #[arg(long)]
    pub local: bool,
    /// Addresses `-m addrtype --dst-type/--src-type LOCAL` treat as local (the node's own
    /// addresses; loopback always counts).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Input interface of a packet from the network (for `-i` matches).
    #[arg(long)]
    pub in_iface: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputArg,
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let text = if args.dump == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the dump from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.dump).with_context(|| format!("reading {}", args.dump))?
    };
    let dump = parse(&text).with_context(|| format!("parsing {}", args.dump))?;
    let request = TraceRequest {
        src: args.src,
        dst: args.dst.ip(),
        dport: args.dst.port(),
        protocol: match args.proto {
            ProtoArg::Tcp => Protocol::Tcp,
            ProtoArg::Udp => Protocol::Udp,
            ProtoArg::Sctp => Protocol::Sctp,
        },
        local: args.local,
        node_ips: args.node_ips,
        in_iface: args.in_iface,
    };
    let result = trace(&dump, &request);
    match args.output {
        OutputArg::Text => super::common::emit(&format_text(&result))?,
        OutputArg::Json => {
            super::common::emit(&format!("{}\n", serde_json::to_string_pretty(&result)?))?
        }
    }
    Ok(ExitCode::SUCCESS)
}
