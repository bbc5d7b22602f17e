//! The `gatehouse` command line: serve | check | demo | certs | matrix | explain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use gatehouse::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "TLS-terminating authorization gateway",
    after_help = "Exit codes: 0 ok, 1 bad config or input, 2 runtime failure (e.g. port in use); explain: 3 when the request would be refused.\nSignals (serve): HUP reloads config and certificates; TERM and INT drain in-flight requests and exit 0; QUIT starts the binary again (same path and arguments) with the listening sockets, then drains and exits 0 once the new process is ready."
)]
struct Cli {
    /// Log output format (stderr). Filter with RUST_LOG, e.g. RUST_LOG=debug.
    #[arg(long, value_enum, global = true, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// The config file (TOML).
        #[arg(short, long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        /// Write the process id here once serving (a process started by an upgrade
        /// rewrites it, so a supervisor can follow the new process).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Load and validate the config (files and keys included), print a summary.
    Check {
        /// The config file (TOML).
        #[arg(short, long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
    },
    /// A self-contained tour on loopback: issuer, mTLS echo backend and the gateway.
    Demo {
        /// HTTPS port of the gateway (0 = any free port).
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
    /// Print the access matrix (roles × routes × read/update) and policy findings.
    Matrix {
        /// The config file (TOML).
        #[arg(short, long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        #[arg(long, value_parser = ["text", "csv", "md"], default_value = "text")]
        format: String,
    },
    /// Dry-run one request through routing, authentication and authorization.
    Explain {
        /// The config file (TOML).
        #[arg(short, long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        /// Bearer token (JWT); `-` reads it from stdin, `@FILE` from a file.
        #[arg(long)]
        token: Option<String>,
        /// JSON file of already-verified claims (signature and key checks skipped).
        #[arg(long)]
        claims: Option<PathBuf>,
        /// HTTP method.
        #[arg(short = 'X', long = "request", default_value = "GET")]
        method: String,
        /// Print one JSON object instead of the step-by-step text.
        #[arg(long)]
        json: bool,
        /// The request URL, e.g. https://api.example.com/orders/7
        url: String,
    },
    /// Write a development PKI as PEM files.
    Certs {
        /// Directory to write ca, server, client and backend .crt/.key into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Replace files that are already there (a new CA invalidates every old cert).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    // Usage errors are bad input (exit 1, docs/reference.md), not clap's default 2, which
    // gatehouse reserves for runtime failures.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            };
        }
    };
    logging::init(cli.log_format);
    match cli.cmd {
        Cmd::Check { config } => match gatehouse::config::load(&config) {
            Ok(rt) => {
                print!("{}", rt.summary());
                for w in &rt.warnings {
                    println!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
                eprintln!("{} error(s) in {}", errs.0.len(), config.display());
                ExitCode::from(1)
            }
        },
        Cmd::Serve { config, pid_file } => {
            gatehouse::server::hold_early_signals();
            let rt = match gatehouse::config::load(&config) {
                Ok(rt) => rt,
                Err(errs) => {
                    eprintln!("{errs}");
                    eprintln!(
                        "{} error(s) in {}; nothing started",
                        errs.0.len(),
                        config.display()
                    );
                    return ExitCode::from(1);
                }
            };
            for w in &rt.warnings {
                tracing::warn!("{w}");
            }
            let mut opts = gatehouse::server::Options::new(config);
            opts.pid_file = pid_file;
            opts.signals = true;
            match gatehouse::server::Gatehouse::start_with(rt, opts) {
                Ok(g) => {
                    g.wait();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Certs { out, force } => {
            let names = [
                "ca.crt",
                "ca.key",
                "server.crt",
                "server.key",
                "client.crt",
                "client.key",
                "backend.crt",
                "backend.key",
            ];
            if !force {
                if let Some(existing) = names.iter().map(|n| out.join(n)).find(|p| p.exists()) {
                    eprintln!(
                        "gatehouse: {} exists; pass --force to replace the whole dev PKI (a new CA invalidates the old certificates)",
                        existing.display()
                    );
                    return ExitCode::from(1);
                }
            }
            let pki = match gatehouse::devkit::DevPki::generate() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("gatehouse: {e:#}");
                    return ExitCode::from(2);
                }
            };
            match pki.write_to(&out) {
                Ok(()) => {
                    println!("wrote ca.crt ca.key server.crt server.key client.crt client.key backend.crt backend.key to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse: cannot write to {}: {e}", out.display());
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Matrix { config, format } => {
            ExitCode::from(gatehouse::matrix::matrix_cli(&config, &format) as u8)
        }
        Cmd::Explain {
            config,
            token,
            claims,
            method,
            json,
            url,
        } => ExitCode::from(gatehouse::explain::explain_cli(
            &config,
            token.as_deref(),
            claims.as_deref(),
            &method,
            &url,
            json,
        ) as u8),
        Cmd::Demo { port } => match gatehouse::demo::run(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse demo: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
