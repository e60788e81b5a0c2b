//! `nbdx completions SHELL` and `nbdx manpage`: shell completions and
//! manual pages generated from the clap definitions, so they never drift
//! from the real options.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Command};
use clap_complete::Shell;

use crate::util::CliResult;

/// Arguments of `nbdx completions`.
#[derive(Debug, Args)]
#[command(after_long_help = "Examples:\n  \
    nbdx completions bash > /etc/bash_completion.d/nbdx\n  \
    nbdx completions zsh > \"${fpath[1]}/_nbdx\"\n  \
    nbdx completions fish > ~/.config/fish/completions/nbdx.fish")]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Arguments of `nbdx manpage`.
#[derive(Debug, Args)]
pub(crate) struct ManpageArgs {
    /// The page of this subcommand (nbdx-COMMAND(1)) instead of nbdx(1).
    #[arg(value_name = "COMMAND", conflicts_with = "out_dir")]
    command: Option<String>,
    /// Write every page (nbdx.1, nbdx-serve.1, ...) into this directory.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` to stdout.
pub(crate) fn completions(mut cmd: Command, args: CompletionsArgs) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "nbdx", &mut out);
    out.flush().map_err(|e| format!("stdout: {e}"))
}

/// Prints one manual page to stdout, or writes them all to a directory.
pub(crate) fn manpage(cmd: Command, args: ManpageArgs) -> CliResult<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building sets the subcommands' display names (`nbdx-serve`).
    cmd.build();
    if let Some(dir) = &args.out_dir {
        clap_mangen::generate_to(cmd, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        return Ok(());
    }
    let page = match &args.command {
        None => cmd,
        Some(name) => {
            cmd.find_subcommand(name).cloned().ok_or_else(|| format!("no subcommand {name:?} (see 'nbdx --help')"))?
        }
    };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page).render(&mut out).and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("nbdx")
            .subcommand(Command::new("serve").about("Serve").arg(clap::Arg::new("run").long("run")))
            .subcommand(Command::new("info").about("Info"))
    }

    #[test]
    fn every_page_is_written_to_the_output_directory() {
        let dir = tempfile::tempdir().unwrap();
        manpage(cli(), ManpageArgs { command: None, out_dir: Some(dir.path().to_owned()) }).unwrap();
        for page in ["nbdx.1", "nbdx-serve.1", "nbdx-info.1"] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.starts_with(".ie"), "{page} is not roff: {text:.40}");
        }
        let serve = std::fs::read_to_string(dir.path().join("nbdx-serve.1")).unwrap();
        assert!(serve.contains("\\-\\-run"), "{serve}");
    }

    #[test]
    fn an_unknown_subcommand_has_no_page() {
        let e = manpage(cli(), ManpageArgs { command: Some("bogus".into()), out_dir: None }).unwrap_err();
        assert!(e.contains("no subcommand \"bogus\""), "{e}");
    }
}
