//! The `patgate` command line. The binary's `main` only calls [`run`].
//!
//! `serve`, `dev`, `check-config`, `admin-key new` run locally; `token ...` and
//! `audit` are clients of the admin API (like `vault` / `kubectl`): the running
//! gateway is the single writer of its store.

mod audit_cmd;
mod client;
mod token_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::token::TokenHash;

/// Default config path when neither `--config` nor `$PATGATE_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "config/patgate.yaml";

/// patgate — a reverse-proxy authentication gateway for Personal Access Tokens.
#[derive(Debug, Parser)]
#[command(name = "patgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Config file option shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Config file.
    #[arg(long, env = "PATGATE_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (data plane + admin listener).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Zero-setup demo: embedded store in a temp dir, echo upstream, a minted token.
    Dev {
        /// Upstream URL (default: a built-in echo server).
        #[arg(long)]
        upstream: Option<String>,
        /// Data-plane address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9091")]
        admin_listen: SocketAddr,
        /// Accepted for uniformity; `dev` needs no config file and ignores it.
        #[command(flatten)]
        _config: ConfigArg,
    },
    /// Validate the config and exit (0 = valid, 2 = problems listed).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Admin keys.
    AdminKey {
        #[command(subcommand)]
        command: AdminKeyCommand,
    },
    /// Manage tokens through the admin API.
    Token(Box<token_cmd::TokenArgs>),
    /// Show the audit trail of management actions through the admin API.
    Audit(Box<audit_cmd::AuditArgs>),
}

#[derive(Debug, Subcommand)]
enum AdminKeyCommand {
    /// Print a fresh admin key and the config line holding its SHA-256.
    New {
        /// Name recorded in the audit trail.
        #[arg(long, default_value = "ops")]
        name: String,
        /// Accepted for uniformity; not read.
        #[command(flatten)]
        _config: ConfigArg,
    },
}

/// The async runtime. With one CPU available (`available_parallelism`, which counts
/// the CPU affinity mask and a cgroup CPU quota: a pod limited to one CPU, or a
/// process pinned with `taskset`), tokio's current-thread scheduler: the same work
/// without the work-stealing machinery, measured at 15 % less CPU per proxied
/// request than a one-worker multi-thread runtime (BENCHMARKS.md). Otherwise the
/// multi-thread scheduler, one worker per CPU. `PATGATE_RUNTIME=current_thread` or
/// `multi_thread` overrides the choice. Blocking work (redb, file reads) goes to the
/// blocking pool either way.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let current_thread = match std::env::var("PATGATE_RUNTIME").as_deref() {
        Ok("current_thread") => true,
        Ok("multi_thread") => false,
        Ok(other) => {
            eprintln!(
                "warning: PATGATE_RUNTIME={other:?} is neither current_thread nor multi_thread; ignored"
            );
            one_cpu
        }
        Err(_) => one_cpu,
    };
    if current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
}

/// Runs an admin-API client command to completion on a fresh runtime.
fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match runtime() {
        Ok(rt) => rt.block_on(command),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses arguments and runs the command; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match crate::config::load(&config.config) {
            Ok(_) => {
                println!("config ok: {}", config.config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::AdminKey {
            command: AdminKeyCommand::New { name, .. },
        } => match crate::token::generate("pgadm_") {
            Ok(key) => {
                println!("admin key (store it now; only its SHA-256 goes in the config):");
                println!();
                println!("  {key}");
                println!();
                println!("config (admin.api_keys):");
                println!();
                println!("    - name: {name}");
                println!("      sha256: \"{}\"", TokenHash::of(&key).to_hex());
                println!();
                println!("for the CLI:  export PATGATE_ADMIN_KEY={key}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: random number generator failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let settings = match crate::config::load(&config.config) {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            crate::telemetry::init(settings.logging.format, &settings.logging.level);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(crate::app::serve(settings, Some(config.config))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "patgate stopped");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev {
            upstream,
            listen,
            admin_listen,
            ..
        } => {
            crate::telemetry::init(crate::config::LogFormat::Pretty, "warn,patgate=info");
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = crate::dev::DevOptions {
                upstream,
                listen,
                admin_listen,
            };
            match rt.block_on(crate::dev::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token(args) => block_on(token_cmd::run(*args)),
        Command::Audit(args) => block_on(audit_cmd::run(*args)),
    }
}
