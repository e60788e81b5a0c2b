//! `nbdx map URI`: the `base:allocation` map of an export, like
//! `nbdinfo --map`: text lines `offset length type description` aligned as
//! nbdinfo aligns them, or a JSON array of entries with the same keys.
//!
//! The map is asked for window by window and printed as it comes, so a
//! map of millions of extents needs no memory for them; neighbours of the
//! same type are merged, also across windows. A server without block
//! status reports everything as data ("a server MAY always safely report
//! a status of 0").

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use clap::Args;
use nbdx::client::Client;
use nbdx::proto::AllocationFlags;

use crate::info::parse_uri;
use crate::util::{runtime, CliResult};

/// Bytes of the export asked for per block status request.
const WINDOW: u64 = 1 << 30;

/// Arguments of `nbdx map`.
#[derive(Debug, Args)]
pub(crate) struct MapArgs {
    /// The export: nbd://HOST[:PORT]/NAME, nbd+unix:///NAME?socket=PATH...
    #[arg(value_name = "URI")]
    uri: String,
    /// Print a JSON array of {offset, length, type, description}.
    #[arg(long)]
    json: bool,
    /// Print the total size of each type instead, with its share of the export.
    #[arg(long)]
    totals: bool,
}

/// Prints entries as nbdinfo does.
struct Printer<W: Write> {
    out: W,
    json: bool,
    first: bool,
}

impl<W: Write> Printer<W> {
    fn begin(&mut self) -> std::io::Result<()> {
        if self.json {
            writeln!(self.out, "[")?;
        }
        Ok(())
    }

    fn entry(&mut self, offset: u64, length: u64, kind: u32) -> std::io::Result<()> {
        let description = AllocationFlags::from_bits_retain(kind).description();
        if self.json {
            let sep = if self.first { "" } else { ",\n" };
            write!(
                self.out,
                "{sep}{{ \"offset\": {offset}, \"length\": {length}, \"type\": {kind}, \"description\": \"{description}\"}}"
            )?;
        } else {
            writeln!(self.out, "{offset:>10}  {length:>10}  {kind:>3}  {description}")?;
        }
        self.first = false;
        Ok(())
    }

    fn end(&mut self) -> std::io::Result<()> {
        if self.json {
            if !self.first {
                writeln!(self.out)?;
            }
            writeln!(self.out, "]")?;
        }
        self.out.flush()
    }
}

/// Walks the map of the whole export, calling `each(offset, length, type)`
/// for runs of equal type.
async fn walk(client: &Client, mut each: impl FnMut(u64, u64, u32) -> std::io::Result<()>) -> CliResult<()> {
    let size = client.size();
    let io = |e: std::io::Error| format!("cannot write the map: {e}");
    if !client.can_block_status() {
        return match size {
            0 => Ok(()),
            _ => each(0, size, 0).map_err(io),
        };
    }
    let mut pending: Option<(u64, u64, u32)> = None;
    let mut pos = 0;
    while pos < size {
        let extents = client.block_status(pos, WINDOW.min(size - pos)).await.map_err(|e| e.to_string())?;
        for e in extents {
            let len = e.length.min(size - pos);
            let kind = e.flags.bits();
            match &mut pending {
                Some((_, l, k)) if *k == kind => *l += len,
                _ => {
                    if let Some((o, l, k)) = pending.take() {
                        each(o, l, k).map_err(io)?;
                    }
                    pending = Some((pos, len, kind));
                }
            }
            pos += len;
            if pos >= size {
                break;
            }
        }
    }
    if let Some((o, l, k)) = pending {
        each(o, l, k).map_err(io)?;
    }
    Ok(())
}

/// `--totals`: bytes per type, in the order types first appear.
fn print_totals(totals: &[(u32, u64)], size: u64, json: bool) {
    let percent = |n: u64| if size == 0 { 0.0 } else { n as f64 * 100.0 / size as f64 };
    if json {
        let entries: Vec<String> = totals
            .iter()
            .map(|&(kind, n)| {
                let d = AllocationFlags::from_bits_retain(kind).description();
                format!("{{ \"size\": {n}, \"percent\": {}, \"type\": {kind}, \"description\": \"{d}\"}}", percent(n))
            })
            .collect();
        println!("[\n{}\n]", entries.join(",\n"));
        return;
    }
    for &(kind, n) in totals {
        let d = AllocationFlags::from_bits_retain(kind).description();
        println!("{n:>10} {:>5.1}% {kind:>3} {d}", percent(n));
    }
}

/// Prints the map of the export at `uri`.
pub(crate) fn run_uri(uri: &str, json: bool) -> CliResult<ExitCode> {
    run(MapArgs { uri: uri.to_owned(), json, totals: false })
}

pub(crate) fn run(args: MapArgs) -> CliResult<ExitCode> {
    let (uri, opts) = parse_uri(&args.uri)?;
    runtime()?.block_on(async {
        let client = Client::connect(&uri.target, &opts).await.map_err(|e| e.to_string())?;
        if args.totals {
            let mut totals: Vec<(u32, u64)> = Vec::new();
            walk(&client, |_, len, kind| {
                match totals.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => *n += len,
                    None => totals.push((kind, len)),
                }
                Ok(())
            })
            .await?;
            totals.sort_by_key(|&(kind, _)| kind);
            print_totals(&totals, client.size(), args.json);
        } else {
            let stdout = std::io::stdout();
            let mut printer = Printer { out: BufWriter::new(stdout.lock()), json: args.json, first: true };
            printer.begin().map_err(|e| e.to_string())?;
            walk(&client, |o, l, k| printer.entry(o, l, k)).await?;
            printer.end().map_err(|e| e.to_string())?;
        }
        client.disconnect().await;
        Ok(ExitCode::SUCCESS)
    })
}
