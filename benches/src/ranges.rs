//! `tessera-ranges`: latency of byte-range reads through the library, for
//! the peer benchmark (`benches/peers/`).
//!
//! Opens an existing store once, resolves NAME (file id, sha256 or ref),
//! then reads `--length` bytes at each offset given on stdin (one decimal
//! offset per line), timing each `read_range` on its own. With `--check
//! FILE`, every range is compared with the same bytes of FILE (read outside
//! the timing). Prints one JSON object: `open_s` (store open + resolve) and
//! `latencies_s` (one per offset, in input order).
//!
//! Usage: `tessera-ranges STORE NAME --length N [--check FILE] < offsets`

use std::io::{BufRead, Read, Seek, SeekFrom};
use std::time::Instant;

use tessera::{Store, StoreOptions};

fn fail(msg: &str) -> ! {
    eprintln!("tessera-ranges: {msg}");
    std::process::exit(2);
}

fn main() {
    let mut pos = Vec::new();
    let mut length: Option<u64> = None;
    let mut check: Option<std::path::PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--length" => length = it.next().and_then(|v| v.parse().ok()),
            "--check" => check = it.next().map(Into::into),
            "-h" | "--help" => {
                println!("usage: tessera-ranges STORE NAME --length N [--check FILE] < offsets");
                return;
            }
            _ => pos.push(a),
        }
    }
    let (Some(length), [store_dir, name]) = (length, pos.as_slice()) else {
        fail("usage: tessera-ranges STORE NAME --length N [--check FILE] < offsets");
    };
    let offsets: Vec<u64> = std::io::stdin()
        .lock()
        .lines()
        .map(|l| l.expect("stdin"))
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().unwrap_or_else(|_| fail("bad offset")))
        .collect();
    let mut source = check.map(|p| std::fs::File::open(p).unwrap_or_else(|e| fail(&e.to_string())));

    let t = Instant::now();
    let store = Store::open(store_dir, StoreOptions::default())
        .unwrap_or_else(|e| fail(&format!("open {store_dir}: {e}")));
    let file = store
        .resolve(name)
        .unwrap_or_else(|e| fail(&format!("{name}: {e}")));
    let open_s = t.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(offsets.len());
    let mut want = vec![0u8; length as usize];
    for &off in &offsets {
        let t = Instant::now();
        let got = store
            .read_range(&file, off, length)
            .unwrap_or_else(|e| fail(&format!("read_range {off}: {e}")));
        latencies.push(t.elapsed().as_secs_f64());
        if let Some(src) = source.as_mut() {
            src.seek(SeekFrom::Start(off)).expect("seek");
            src.read_exact(&mut want).expect("read source");
            if got[..] != want[..] {
                fail(&format!("range at {off} differs from the source"));
            }
        }
    }
    store
        .close()
        .unwrap_or_else(|e| fail(&format!("close: {e}")));
    println!(
        "{}",
        serde_json::json!({ "open_s": open_s, "latencies_s": latencies })
    );
}
