//! `kluis policy validate`: check a schema and policy files without a server.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Exit, fail};

/// Arguments of `kluis policy`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files against a schema (the built-in ones when none are given).
    Validate {
        /// Cedar schema file; the built-in schema when omitted.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Cedar policy files; the built-in policies when none are given.
        files: Vec<PathBuf>,
    },
}

/// Runs `kluis policy`.
pub fn run(args: &PolicyArgs) -> Exit {
    match &args.command {
        PolicyCommand::Validate { schema, files } => {
            match kluis::config::load_policy(schema.as_deref(), files) {
                Ok(_) => {
                    println!("policies are valid");
                    Exit::Success
                }
                Err(kluis::config::OpenError::Policy(e)) => {
                    eprintln!("{e}");
                    Exit::CheckFailed
                }
                Err(e) => fail(e),
            }
        }
    }
}
