//! The `portcullis` binary: the agent daemon (`run`) and its command-line tools.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::{
    loader::{self, DEFAULT_PIN_DIR, Hook, XdpModeOption},
    policy::{self, PolicyError},
    run::{self, RunOptions},
    stats,
};

/// Exit code for a bad policy or bad arguments (sysexits.h EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Kernel-level API enforcement with XDP and TC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, apply the policy, attach, and enforce until SIGTERM or SIGINT.
    Run {
        /// Interface to protect (repeat for several).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
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
        /// Format of the agent's own log lines on stderr (events are always JSON on stdout).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Seconds between counter summaries on stdout.
        #[arg(long, default_value_t = 10)]
        summary_interval: u64,
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print the counters of a running agent.
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// One JSON object instead of a table.
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
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<PolicyError>().is_some() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            ifaces,
            policy,
            hook,
            xdp_mode,
            pin_dir,
            log_format,
            summary_interval,
        } => {
            init_logging(log_format);
            // Everything is validated before the kernel is touched.
            let loaded = policy::load(&policy)?;
            let options = RunOptions {
                ifaces,
                policy,
                hook,
                xdp_mode,
                pin_dir,
                summary_interval: Duration::from_secs(summary_interval.max(1)),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run::run(options, loaded))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Validate { file },
        } => {
            let loaded = policy::load(&file)?;
            println!(
                "{}: valid ({} allow, {} deny, {} rate limits)",
                file.display(),
                loaded.allow.len(),
                loaded.deny.len(),
                loaded.rate_limits.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { pin_dir, json } => {
            stats::print(&pin_dir, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { pin_dir } => {
            loader::remove_pins(&pin_dir)?;
            println!("removed {}", pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
