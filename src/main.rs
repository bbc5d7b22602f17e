//! The `gatehouse` command line: serve | check | demo | certs | matrix | explain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "TLS-terminating authorization gateway"
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
        #[arg(short, long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        /// Take the listening sockets over from a running gatehouse (send it SIGQUIT).
        #[arg(long, short = 'u')]
        upgrade: bool,
    },
    /// Load and validate the config (files and keys included), print a summary.
    Check {
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
        #[arg(short, long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        #[arg(long, value_parser = ["text", "csv", "md"], default_value = "text")]
        format: String,
    },
    /// Dry-run one request through routing, authentication and authorization.
    Explain {
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
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Cmd::Serve { config, upgrade } => {
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
            let mut opts = gatehouse::server::Options::new(config);
            opts.upgrade = upgrade;
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
        Cmd::Certs { out } => {
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
            ExitCode::from(gatehouse::policy::matrix::matrix_cli(&config, &format) as u8)
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
