//! `nbdx info URI`: what a server says about its exports, like nbdinfo
//! (same JSON keys, same predicates and exit codes: 0 true, 2 false, 1
//! error). Only what the handshake tells is shown: no content probing.

use std::process::ExitCode;

use clap::Args;
use nbdx::client::{self, ClientError, ClientOptions, ExportInfo, Negotiation};
use nbdx::proto::ReplyMode;
use nbdx::uri::NbdUri;
use serde::Serialize;

use crate::util::{runtime, CliResult};

/// Arguments of `nbdx info`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("mode").args(["list", "size", "is", "is_read_only", "can", "map"]))]
pub(crate) struct InfoArgs {
    /// The export: nbd://HOST[:PORT]/NAME, nbd+unix:///NAME?socket=PATH...
    #[arg(value_name = "URI")]
    uri: String,
    /// Print JSON with nbdinfo's keys.
    #[arg(long)]
    json: bool,
    /// List every export of the server with its details (the URI's
    /// export name is ignored).
    #[arg(short = 'L', long)]
    list: bool,
    /// Print only the size in bytes.
    #[arg(long)]
    size: bool,
    /// Exit 0 if the export has PROPERTY (read-only, rotational, tls), 2 if not.
    #[arg(long, value_name = "PROPERTY")]
    is: Option<String>,
    /// The same as --is read-only.
    #[arg(long)]
    is_read_only: bool,
    /// Exit 0 if the export can FEATURE, 2 if not: cache, connect, df,
    /// extents, extended-headers, fast-zero, flush, fua, multi-conn, read,
    /// structured-reply, trim, write, zero.
    #[arg(long, value_name = "FEATURE")]
    can: Option<String>,
    /// Print the allocation map (like nbdx map).
    #[arg(long)]
    map: bool,
}

/// nbdinfo's JSON document.
#[derive(Debug, Serialize)]
struct Document {
    protocol: &'static str,
    #[serde(rename = "TLS")]
    tls: bool,
    structured: bool,
    extended: bool,
    exports: Vec<ExportJson>,
}

/// One export in nbdinfo's JSON keys and order.
#[derive(Debug, Serialize)]
struct ExportJson {
    #[serde(rename = "export-name")]
    export_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    uri: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    contexts: Vec<String>,
    is_rotational: bool,
    is_read_only: bool,
    can_cache: bool,
    can_df: bool,
    can_fast_zero: bool,
    can_flush: bool,
    can_fua: bool,
    can_multi_conn: bool,
    can_trim: bool,
    can_zero: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size_minimum: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size_preferred: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size_maximum: Option<u32>,
    #[serde(rename = "export-size")]
    export_size: u64,
    #[serde(rename = "export-size-str")]
    export_size_str: String,
}

impl ExportJson {
    fn new(info: &ExportInfo, uri: &NbdUri, listed_description: Option<&str>) -> Self {
        let mut uri = uri.clone();
        uri.export_name = info.name.clone();
        let description = info.description.as_deref().or(listed_description).filter(|d| !d.is_empty());
        Self {
            export_name: info.name.clone(),
            description: description.map(str::to_owned),
            uri: uri.to_string(),
            contexts: info.contexts.clone(),
            is_rotational: info.is_rotational(),
            is_read_only: info.is_read_only(),
            can_cache: info.can_cache(),
            can_df: info.can_df(),
            can_fast_zero: info.can_fast_zero(),
            can_flush: info.can_flush(),
            can_fua: info.can_fua(),
            can_multi_conn: info.can_multi_conn(),
            can_trim: info.can_trim(),
            can_zero: info.can_zero(),
            block_size_minimum: info.block_size.map(|b| b.minimum),
            block_size_preferred: info.block_size.map(|b| b.preferred),
            block_size_maximum: info.block_size.map(|b| b.maximum),
            export_size: info.size,
            export_size_str: human_size(info.size),
        }
    }

    /// nbdinfo's text layout.
    fn print(&self) {
        println!("export=\"{}\":", self.export_name);
        if let Some(d) = &self.description {
            println!("\tdescription: {d}");
        }
        match self.export_size != 0 && self.export_size % 1024 == 0 {
            true => println!("\texport-size: {} ({})", self.export_size, self.export_size_str),
            false => println!("\texport-size: {}", self.export_size),
        }
        println!("\turi: {}", self.uri);
        if !self.contexts.is_empty() {
            println!("\tcontexts:");
            for c in &self.contexts {
                println!("\t\t{c}");
            }
        }
        let flags = [
            ("is_rotational", self.is_rotational),
            ("is_read_only", self.is_read_only),
            ("can_cache", self.can_cache),
            ("can_df", self.can_df),
            ("can_fast_zero", self.can_fast_zero),
            ("can_flush", self.can_flush),
            ("can_fua", self.can_fua),
            ("can_multi_conn", self.can_multi_conn),
            ("can_trim", self.can_trim),
            ("can_zero", self.can_zero),
        ];
        for (name, value) in flags {
            println!("\t{name}: {value}");
        }
        let sizes = [
            ("block_size_minimum", self.block_size_minimum),
            ("block_size_preferred", self.block_size_preferred),
            ("block_size_maximum", self.block_size_maximum),
        ];
        for (name, value) in sizes {
            if let Some(v) = value {
                println!("\t{name}: {v}");
            }
        }
    }
}

/// nbdinfo's `export-size-str`: the largest binary unit that divides the size.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    let (mut n, mut unit) = (bytes, 0);
    while n != 0 && n % 1024 == 0 && unit < UNITS.len() - 1 {
        n /= 1024;
        unit += 1;
    }
    format!("{n}{}", UNITS[unit])
}

/// The URI and the options it implies; a bad URI is an error (exit 1).
pub(crate) fn parse_uri(text: &str) -> CliResult<(NbdUri, ClientOptions)> {
    let uri = NbdUri::parse(text).map_err(|e| e.to_string())?;
    let opts = ClientOptions::from_uri(&uri);
    Ok((uri, opts))
}

fn document(exports: &[ExportInfo], json: Vec<ExportJson>) -> Document {
    let first = exports.first();
    Document {
        protocol: first.map_or("newstyle-fixed", ExportInfo::protocol),
        tls: first.is_some_and(|i| i.tls),
        structured: first.is_some_and(|i| i.mode != ReplyMode::Simple),
        extended: first.is_some_and(|i| i.mode == ReplyMode::Extended),
        exports: json,
    }
}

fn print(doc: &Document, json: bool) -> CliResult<()> {
    if json {
        let text = serde_json::to_string_pretty(doc).map_err(|e| format!("cannot encode JSON: {e}"))?;
        println!("{text}");
        return Ok(());
    }
    let tls = if doc.tls { "with TLS" } else { "without TLS" };
    let packets = match (doc.extended, doc.structured) {
        (true, _) => ", using extended packets",
        (false, true) => ", using structured packets",
        _ => "",
    };
    println!("protocol: {} {tls}{packets}", doc.protocol);
    for e in &doc.exports {
        e.print();
    }
    Ok(())
}

/// Every export of the server, each asked with `NBD_OPT_INFO` on one
/// negotiation; `(info, listed description)`.
async fn list(uri: &NbdUri, opts: &ClientOptions) -> Result<Vec<(ExportInfo, String)>, ClientError> {
    let mut n = Negotiation::start(&uri.target, opts).await?;
    let entries = n.list_exports().await?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        match n.info(&e.name).await {
            Ok(info) => out.push((info, e.description)),
            Err(ClientError::Unsupported(_)) => {
                let info = client::info(&uri.target, &opts.clone().export_name(&e.name)).await?;
                out.push((info, e.description));
            }
            Err(err) => return Err(err),
        }
    }
    let _ = n.abort().await;
    Ok(out)
}

/// What `--is` takes.
const IS: [&str; 3] = ["read-only", "rotational", "tls"];
/// What `--can` takes.
const CAN: [&str; 15] = [
    "block-status",
    "cache",
    "connect",
    "df",
    "extended-headers",
    "extents",
    "fast-zero",
    "flush",
    "fua",
    "multi-conn",
    "read",
    "structured-reply",
    "trim",
    "write",
    "zero",
];

/// Answers `--is` / `--can` from what the server said.
fn predicate(name: &str, info: &ExportInfo) -> CliResult<bool> {
    Ok(match name {
        "read-only" => info.is_read_only(),
        "rotational" => info.is_rotational(),
        "tls" => info.tls,
        "connect" | "read" => true,
        "write" => !info.is_read_only(),
        "cache" => info.can_cache(),
        "df" => info.can_df(),
        "fast-zero" => info.can_fast_zero(),
        "flush" => info.can_flush(),
        "fua" => info.can_fua(),
        "multi-conn" => info.can_multi_conn(),
        "trim" => info.can_trim(),
        "zero" => info.can_zero(),
        "structured-reply" => info.mode != ReplyMode::Simple,
        "extended-headers" => info.mode == ReplyMode::Extended,
        "extents" | "block-status" => {
            info.mode != ReplyMode::Simple && info.contexts.iter().any(|c| c == "base:allocation")
        }
        other => return Err(format!("unknown --can or --is property: {other}")),
    })
}

fn exit(truth: bool) -> ExitCode {
    if truth {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

pub(crate) fn run(args: InfoArgs) -> CliResult<ExitCode> {
    if args.map {
        return crate::map::run_uri(&args.uri, args.json);
    }
    let (uri, opts) = parse_uri(&args.uri)?;
    let property = match (&args.is, &args.can, args.is_read_only) {
        (Some(p), _, _) if !IS.contains(&p.as_str()) => return Err(format!("unknown --is property: {p}")),
        (_, Some(p), _) if !CAN.contains(&p.as_str()) => return Err(format!("unknown --can feature: {p}")),
        (Some(p), _, _) | (_, Some(p), _) => Some(p.clone()),
        (_, _, true) => Some("read-only".to_owned()),
        _ => None,
    };
    runtime()?.block_on(async {
        if args.list {
            let exports = list(&uri, &opts).await.map_err(|e| e.to_string())?;
            let json = exports.iter().map(|(i, d)| ExportJson::new(i, &uri, Some(d))).collect();
            let infos: Vec<ExportInfo> = exports.into_iter().map(|(i, _)| i).collect();
            print(&document(&infos, json), args.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        let info = client::info(&uri.target, &opts).await;
        if let Some(p) = property {
            return match info {
                Err(_) if p == "connect" => Ok(exit(false)),
                Err(e) => Err(e.to_string()),
                Ok(info) => Ok(exit(predicate(&p, &info)?)),
            };
        }
        let info = info.map_err(|e| e.to_string())?;
        if args.size {
            println!("{}", info.size);
            return Ok(ExitCode::SUCCESS);
        }
        let json = vec![ExportJson::new(&info, &uri, None)];
        print(&document(std::slice::from_ref(&info), json), args.json)?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_use_the_largest_unit_that_divides_exactly() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(1000), "1000");
        assert_eq!(human_size(64 << 20), "64M");
        assert_eq!(human_size(2_125_119_488), "2075312K");
        assert_eq!(human_size(1 << 60), "1E");
    }
}
