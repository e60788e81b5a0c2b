//! `--layer SPEC`: wrapper devices stacked on a SOURCE, shared by every
//! subcommand that opens one (flatten [`LayerArgs`] into its arguments).

use std::sync::Arc;

use clap::Args;
use nbdx::device::Device;
use nbdx::layer::{apply_layers, LayerSpec};
use nbdx::source::Source;

use crate::util::CliResult;

/// The `--layer` arguments, in the order given.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct LayerArgs {
    /// Stack a layer on the device (repeatable; the first is closest to
    /// the device): cow, cow=FILE, delay=READ_MS[:WRITE_MS],
    /// error=RATE[:ERRNO[:SEED]], log=FILE, readahead.
    #[arg(long = "layer", value_name = "SPEC")]
    pub(crate) layers: Vec<LayerSpec>,
}

impl LayerArgs {
    /// Whether a copy-on-write layer is stacked: the base is then opened
    /// read-only, since nothing is ever written to it.
    pub(crate) fn has_cow(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, LayerSpec::Cow { .. }))
    }

    /// Whether a layer writes to or locks a file, so that it cannot be
    /// stacked on several devices at once.
    pub(crate) fn uses_files(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, LayerSpec::Cow { overlay: Some(_) } | LayerSpec::Log { .. }))
    }

    /// Opens `source` (read-only if asked, or if a cow layer protects it)
    /// and stacks the layers on it.
    pub(crate) async fn open(&self, source: &Source, read_only: bool) -> CliResult<Arc<dyn Device>> {
        let base = source.open_async(read_only || self.has_cow()).await.map_err(|e| e.to_string())?;
        apply_layers(base, &self.layers).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl LayerArgs {
        fn open_blocking(&self, source: &Source, read_only: bool) -> CliResult<Arc<dyn Device>> {
            tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(self.open(source, read_only))
        }
    }

    fn args(specs: &[&str]) -> LayerArgs {
        LayerArgs { layers: specs.iter().map(|s| s.parse().unwrap()).collect() }
    }

    #[test]
    fn a_cow_layer_makes_a_read_only_base_writable() {
        let source = Source::Memory { size: 1 << 20 };
        assert!(args(&[]).open_blocking(&source, true).unwrap().caps().read_only);
        assert!(!args(&["cow"]).open_blocking(&source, false).unwrap().caps().read_only);
        assert!(!args(&["delay=0", "cow"]).open_blocking(&source, false).unwrap().caps().read_only);
    }

    #[test]
    fn file_layers_are_told_apart_from_the_others() {
        assert!(!args(&["cow", "delay=1", "error=0.5", "readahead"]).uses_files());
        assert!(args(&["cow=o.cow"]).uses_files());
        assert!(args(&["log=requests.log"]).uses_files());
    }
}
