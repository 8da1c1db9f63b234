//! The `portcullis` binary: the agent daemon (`run`) and its command-line tools.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum, builder::TypedValueParser as _};
use portcullis::{
    cli::{self, CliError},
    control::{DEFAULT_SOCKET, protocol::BanKind},
    lists,
    loader::{self, DEFAULT_PIN_DIR, Hook, XdpModeOption},
    policy::{self, Mode, PolicyError},
    run::{self, OnExit, RunOptions},
};

/// Default `--state-dir`.
const DEFAULT_STATE_DIR: &str = "/var/lib/portcullis";

/// Exit code for a bad policy or bad arguments (sysexits.h EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    // `portcullis run --version` works too: a container's entrypoint is `portcullis run`.
    propagate_version = true,
    about = "Kernel-level API enforcement with XDP and TC"
)]
struct Cli {
    /// The running agent's control socket.
    #[arg(long, global = true, env = "PORTCULLIS_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, apply the policy, attach, and enforce until SIGTERM or SIGINT.
    Run {
        /// Interface to protect (repeat for several).
        #[arg(long = "iface", required_unless_present = "iface_of_default_route")]
        ifaces: Vec<String>,
        /// Also protect the interfaces of the IPv4 and IPv6 default routes (on a node: where
        /// traffic from outside arrives, whatever the interface is called there).
        #[arg(long)]
        iface_of_default_route: bool,
        /// Policy file (YAML); watched and re-applied when it changes.
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, value_enum, default_value_t = Hook::Xdp)]
        hook: Hook,
        #[arg(long, value_enum, default_value_t = XdpModeOption::Auto)]
        xdp_mode: XdpModeOption,
        /// Where maps and links are pinned (on bpffs).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Where the applied policy versions are kept for rollback.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Serve Prometheus metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9477).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// On SIGTERM/SIGINT: detach and remove the pins, or keep the programs enforcing
        /// the last policy for the next agent to take over (upgrades).
        #[arg(long, value_enum, default_value_t = OnExit::Detach)]
        on_exit: OnExit,
        /// If another tool's XDP program holds an interface, remove it and attach instead
        /// of refusing to start.
        #[arg(long)]
        replace_foreign_xdp: bool,
        /// Have the kernel time BPF programs while the agent runs (every program on the
        /// machine, at a small cost), for the program run-time metrics.
        #[arg(long)]
        bpf_stats: bool,
        /// Format of the agent's own log lines on stderr (events are always JSON on stdout).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Seconds between counter summaries on stdout.
        #[arg(long, default_value_t = 10)]
        summary_interval: u64,
        /// Enforce the ban decisions of this CrowdSec Local API (e.g. http://127.0.0.1:8080),
        /// as a bouncer; needs --crowdsec-key-file. Default: the `url` of the machine file.
        #[arg(long, env = "PORTCULLIS_CROWDSEC_URL", requires = "crowdsec_key_file")]
        crowdsec_url: Option<String>,
        /// File holding the bouncer API key (`cscli bouncers add portcullis`).
        #[arg(long, env = "PORTCULLIS_CROWDSEC_KEY_FILE")]
        crowdsec_key_file: Option<PathBuf>,
        /// Credentials of a CrowdSec machine (the file `cscli machines add NAME -f FILE`
        /// writes: url, login, password): the bans this node makes are posted to the Local
        /// API, for every node.
        #[arg(
            long,
            env = "PORTCULLIS_CROWDSEC_MACHINE_FILE",
            requires = "crowdsec_key_file"
        )]
        crowdsec_machine_file: Option<PathBuf>,
        /// This node's name where the fleet sees it (the bans it shares). Default: the host
        /// name; in Kubernetes, the node's name.
        #[arg(long, env = "PORTCULLIS_NODE_NAME")]
        node_name: Option<String>,
        /// Time between decision pulls (e.g. 1s, 500ms).
        #[arg(long, env = "PORTCULLIS_CROWDSEC_PULL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
        crowdsec_pull_interval: Duration,
    },
    /// Policy files and the policy in force.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Switch one rate limit, HTTP route or response rule, deny name or deny CIDR to enforce
    /// or shadow at run time.
    Mode {
        rule: String,
        #[arg(value_parser = mode_parser())]
        mode: Mode,
    },
    /// Ban a CIDR (all its traffic), for a while or until unblocked.
    Block {
        cidr: String,
        /// How long, e.g. 10m or 2h; without it the block lasts until `unblock`.
        #[arg(long)]
        ttl: Option<String>,
        /// Why, shown by `bans`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a block or ban on exactly this CIDR.
    Unblock { cidr: String },
    /// Temporary and escalation bans, with the time they have left.
    Bans {
        /// Only this kind.
        #[arg(long, value_enum)]
        kind: Option<BanKindArg>,
        /// Only entries that hold this address or CIDR, or lie inside it.
        #[arg(long, value_name = "CIDR")]
        covering: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Packets by verdict and rule, events, map occupancy.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Stream the agent's events as JSON lines.
    Events {
        /// Keep streaming until interrupted (the only mode there is, but say it).
        #[arg(long, required = true)]
        follow: bool,
    },
    /// Interfaces, hooks, program ids, policy version, uptime.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove everything an agent pinned under the pin directory: its links (which
    /// detaches its programs) and its maps. Nothing else is touched.
    Detach {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file without touching the kernel; exit 64 if it is invalid.
    Validate { file: PathBuf },
    /// Validate a file, then apply it to the running agent as a new version.
    Apply { file: PathBuf },
    /// What applying a file would change, without applying it.
    Diff { file: PathBuf },
    /// The policy in force, its version, and the versions kept.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Apply a kept version again (default: the one before the current one).
    Rollback {
        // Not named `version`: that id belongs to the propagated --version flag.
        #[arg(value_name = "VERSION")]
        to: Option<u64>,
    },
}

/// Modes by the names policy files use; clap lists them in the help and in errors.
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = Mode> {
    clap::builder::PossibleValuesParser::new(Mode::ALL.map(Mode::name))
        .map(|name| Mode::from_name(&name).expect("clap only passes listed names"))
}

/// `bans --kind`, by the names `bans` prints.
#[derive(Clone, Copy, ValueEnum)]
enum BanKindArg {
    Block,
    Escalation,
    Decision,
}

impl BanKindArg {
    fn kind(self) -> BanKind {
        match self {
            BanKindArg::Block => BanKind::Block,
            BanKindArg::Escalation => BanKind::Escalation,
            BanKindArg::Decision => BanKind::Decision,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A CLI piped into `head` should stop quietly when the pipe closes, as other Unix
        // tools do, instead of panicking on the failed write.
        // SAFETY: setting a signal disposition before any threads exist.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let bad_input = e.downcast_ref::<PolicyError>().is_some()
                || e.downcast_ref::<CliError>()
                    .is_some_and(CliError::is_bad_input);
            if bad_input {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let socket = cli.socket.as_path();
    match cli.command {
        Command::Run {
            mut ifaces,
            iface_of_default_route,
            policy,
            hook,
            xdp_mode,
            pin_dir,
            state_dir,
            metrics,
            on_exit,
            replace_foreign_xdp,
            bpf_stats,
            log_format,
            summary_interval,
            crowdsec_url,
            crowdsec_key_file,
            crowdsec_machine_file,
            crowdsec_pull_interval,
            node_name,
        } => {
            init_logging(log_format);
            if iface_of_default_route {
                for iface in portcullis::default_route::interfaces()? {
                    if !ifaces.contains(&iface) {
                        ifaces.push(iface);
                    }
                }
            }
            // Everything is validated before the kernel is touched.
            let crowdsec = match crowdsec_key_file {
                Some(key_file) => Some(portcullis::crowdsec::Config::load(
                    crowdsec_url.as_deref(),
                    &key_file,
                    crowdsec_pull_interval,
                    crowdsec_machine_file.as_deref(),
                    node_name.unwrap_or_else(host_name),
                )?),
                None => None,
            };
            let start = run::start_policy(&policy, &state_dir)?;
            let options = RunOptions {
                ifaces,
                policy,
                hook,
                xdp_mode,
                pin_dir,
                control_socket: cli.socket.clone(),
                state_dir,
                metrics,
                on_exit,
                replace_foreign_xdp,
                bpf_stats,
                summary_interval: Duration::from_secs(summary_interval.max(1)),
                crowdsec,
            };
            // Two threads: the HTTP endpoint, the control socket and the event reader go on
            // while the main loop applies a policy (which it does with block_in_place).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(run::run(options, start))?;
        }
        Command::Policy { command } => match command {
            PolicyCommand::Validate { file } => {
                let loaded = policy::load(&file)?;
                println!(
                    "{}: valid ({} allow, {} deny, {} rate limits)",
                    file.display(),
                    loaded.allow.len(),
                    loaded.deny.len(),
                    loaded.rate_limits.len()
                );
                if let Some(http) = &loaded.http {
                    println!(
                        "http: {} routes and {} response rules on ports {:?}",
                        http.routes.len(),
                        http.responses.len(),
                        http.ports
                    );
                }
                for list in &loaded.lists {
                    println!("{}", lists::check(list));
                }
            }
            PolicyCommand::Apply { file } => cli::policy_apply(socket, &file)?,
            PolicyCommand::Diff { file } => cli::policy_diff(socket, &file)?,
            PolicyCommand::Show { json } => cli::policy_show(socket, json)?,
            PolicyCommand::Rollback { to } => cli::policy_rollback(socket, to)?,
        },
        Command::Mode { rule, mode } => cli::mode(socket, rule, mode)?,
        Command::Block { cidr, ttl, reason } => cli::block(socket, cidr, ttl.as_deref(), reason)?,
        Command::Unblock { cidr } => cli::unblock(socket, cidr)?,
        Command::Bans {
            kind,
            covering,
            json,
        } => cli::bans(socket, kind.map(BanKindArg::kind), covering, json)?,
        Command::Stats { json } => cli::stats(socket, json)?,
        Command::Events { follow: _ } => cli::follow_events(socket)?,
        Command::Status { json } => cli::status(socket, json)?,
        Command::Detach { pin_dir } => {
            if !pin_dir.exists() {
                println!("nothing pinned in {}", pin_dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            // A running agent holds the lock; it detaches by itself when stopped.
            let _lock = loader::PinDirLock::take(&pin_dir)?;
            loader::remove_pins(&pin_dir)?;
            println!("removed {}", pin_dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The host's name (the node's, outside a container).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "portcullis".to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap checks a command's definition (unique argument names...) only when it is built;
    /// this builds every subcommand, so a conflict fails here rather than at a user's prompt.
    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
