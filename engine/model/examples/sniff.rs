//! Prints the `ModelInfo` JSON of each file given, streaming it through a
//! `Sniffer` in 1 MiB batches: `cargo run -p tessera-model --example sniff -- FILE...`
//! (`--summary` prints one line per file instead).

use std::fs::File;
use std::io::Write;

use tessera_model::{sniff_reader, Limits};

fn main() {
    let mut out = std::io::stdout().lock();
    let mut summary = false;
    for arg in std::env::args().skip(1) {
        if arg == "--summary" {
            summary = true;
            continue;
        }
        let info = match File::open(&arg).and_then(|f| sniff_reader(f, Limits::default())) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("{arg}: {e}");
                continue;
            }
        };
        if summary {
            let line = format!(
                "{arg}\t{}\t{} tensors\t{} members\t{:?}\t{}\t{}",
                info.format,
                info.tensors.len(),
                info.members.len(),
                info.verdict,
                info.unsafe_imports.join(","),
                info.reason.as_deref().unwrap_or("")
            );
            if writeln!(out, "{line}").is_err() {
                return;
            }
        } else {
            match serde_json::to_string_pretty(&info) {
                Ok(j) => {
                    if writeln!(out, "{j}").is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("{arg}: {e}"),
            }
        }
    }
}
