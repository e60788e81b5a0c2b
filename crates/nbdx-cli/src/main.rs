//! `nbdx`: serve block devices over NBD, inspect and copy exports, attach
//! them to the Linux kernel. Protocol logic lives in the `nbdx` library; this
//! binary only parses arguments, wires the library up and reports errors.

mod attach;
mod copy;
mod detach;
mod generate;
mod info;
mod layers;
mod limits;
mod loopdev;
mod map;
mod monitor;
mod serve;
mod status;
mod tls_args;
mod util;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Network Block Device toolkit.
#[derive(Debug, Parser)]
#[command(name = "nbdx", version, about, propagate_version = true, args_override_self = true)]
struct Cli {
    /// Log more (repeat for more detail). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a device (RAM disk, file, block device) over NBD.
    Serve(Box<serve::ServeArgs>),
    /// Attach an NBD export to the kernel as /dev/nbdN (prints the path).
    Attach(attach::AttachArgs),
    /// Detach /dev/nbdN.
    Detach(detach::DetachArgs),
    /// Show what /dev/nbdN devices are attached to.
    Status(status::StatusArgs),
    /// Serve SOURCE in-process as /dev/nbdN (foreground, or around --run CMD).
    Loop(loopdev::LoopArgs),
    /// Show what a server says about an export (like nbdinfo).
    Info(info::InfoArgs),
    /// Print the allocation map of an export (like nbdinfo --map).
    Map(map::MapArgs),
    /// Copy between NBD exports, files, block devices and pipes (like nbdcopy).
    Copy(copy::CopyArgs),
    /// Print a shell completion script (bash, elvish, fish, powershell, zsh).
    Completions(generate::CompletionsArgs),
    /// Print the manual page (roff), or write all of them with --out-dir.
    Manpage(generate::ManpageArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return util::usage_error(e),
    };
    util::init_logging(cli.verbose);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Attach(args) => attach::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Status(args) => status::run(args),
        Command::Loop(args) => loopdev::run(args),
        Command::Info(args) => info::run(args),
        Command::Map(args) => map::run(args),
        Command::Copy(args) => copy::run(args),
        Command::Completions(args) => generate::completions(Cli::command(), args).map(|()| ExitCode::SUCCESS),
        Command::Manpage(args) => generate::manpage(Cli::command(), args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nbdx: {e}");
            ExitCode::from(1)
        }
    }
}
