//! Real-process kill test: `tessera put` is SIGKILLed at random moments;
//! after each kill the store must reopen, hold every acknowledged file
//! byte-identical (an acknowledged file is one whose line `put` printed), and
//! have no temp files left once reopened.
//!
//! CI runs a few kills. Long mode: `TESSERA_KILLS=200 cargo test --release -p
//! tessera-cli --test kill -- --nocapture`. `TESSERA_KILL_SEED` replays a run.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

use tessera_synth::SplitMix64 as Rng;

/// A pool of random blocks that source files are built from, so puts dedup.
fn make_blocks(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..24)
        .map(|_| {
            let mut b = vec![0u8; 256 * 1024];
            let mut r = Rng::new(rng.next_u64());
            r.fill_bytes(&mut b);
            b
        })
        .collect()
}

/// `count` new source files in `dir`: pool blocks in random order, cut to a
/// random length (so almost every file is distinct, and most chunks dedup).
fn make_sources(dir: &Path, rng: &mut Rng, blocks: &[Vec<u8>], count: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("mkdir");
    (0..count)
        .map(|i| {
            let mut data = Vec::new();
            for _ in 0..(2 + rng.below(14)) {
                data.extend_from_slice(&blocks[rng.below(blocks.len() as u64) as usize]);
            }
            let cut = rng.below(100_000) as usize;
            data.truncate(data.len().saturating_sub(cut));
            let p = dir.join(format!("src-{i}.bin"));
            std::fs::write(&p, &data).expect("write source");
            p
        })
        .collect()
}

fn tessera(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run tessera")
}

fn check_file(store: &Path, id: &str, src: &Path) {
    let out = tessera(store, &["cat", id]);
    assert!(
        out.status.success(),
        "acknowledged file {id} unreadable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = std::fs::read(src).expect("source");
    assert!(
        out.stdout == want,
        "acknowledged file {id} read back different bytes"
    );
}

#[test]
fn kill_minus_nine_loses_no_acknowledged_file() {
    let kills: usize = std::env::var("TESSERA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("TESSERA_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("kill test: {kills} kills, TESSERA_KILL_SEED={seed}");
    let mut rng = Rng::new(seed);
    let work = tempfile::tempdir().expect("tempdir");
    let store = work.path().join("store");
    let blocks = make_blocks(&mut rng);
    let sources = make_sources(&work.path().join("warm"), &mut rng, &blocks, 4);

    // Calibrate: how long does an uninterrupted put of 4 files take?
    let t = Instant::now();
    let warm: Vec<&str> = sources[..4]
        .iter()
        .map(|p| p.to_str().expect("utf8"))
        .collect();
    let mut args = vec!["put", "--json"];
    args.extend(&warm);
    let out = tessera(&store, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = t.elapsed().max(Duration::from_millis(5));

    // file id -> source, for every acknowledged put.
    let mut acked: BTreeMap<String, PathBuf> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        acked.insert(
            v["file_id"].as_str().expect("id").to_string(),
            PathBuf::from(v["path"].as_str().expect("path")),
        );
    }
    let mut killed_mid_run = 0;
    // Kills that provably landed inside a put's writes: an object was being
    // staged in the store's tmp/ at the moment of the kill, or the put had
    // acknowledged some of its files but not all.
    let mut inside_put = 0;
    let mut acked_puts = acked.len();
    let mut k = 0;
    // Up to three times the kills asked for, until at least one landed
    // inside a put (the test is worthless otherwise).
    while k < kills || (inside_put == 0 && k < 3 * kills) {
        k += 1;
        let n = 1 + rng.below(5) as usize;
        let mut args: Vec<String> = vec![
            "--store".into(),
            store.display().to_string(),
            "put".into(),
            "--json".into(),
        ];
        for src in make_sources(&work.path().join(format!("k{k}")), &mut rng, &blocks, n) {
            args.push(src.display().to_string());
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn put");
        let delay = full.mul_f64(rng.below(900) as f64 / 1000.0 * n as f64 / 4.0);
        std::thread::sleep(delay);
        let finished = child.try_wait().expect("try_wait").is_some();
        let staging = std::fs::read_dir(store.join("tmp")).is_ok_and(|mut d| d.next().is_some());
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !finished {
            killed_mid_run += 1;
        }
        let mut stdout = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut stdout);
        }
        let printed = stdout.lines().filter(|l| l.ends_with('}')).count();
        if !finished && (staging || (printed > 0 && printed < n)) {
            inside_put += 1;
        }
        for line in stdout.lines() {
            // A torn last line was never fully printed: not acknowledged.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(id), Some(path)) = (v["file_id"].as_str(), v["path"].as_str()) else {
                continue;
            };
            acked.insert(id.to_string(), PathBuf::from(path));
            acked_puts += 1;
            check_file(&store, id, Path::new(path));
        }
        // Reopening cleans tmp/; spot-check two earlier acknowledged files.
        let stat = tessera(&store, &["stat", "--json"]);
        assert!(
            stat.status.success(),
            "kill {k}: store does not reopen: {}",
            String::from_utf8_lossy(&stat.stderr)
        );
        let tmp_left = std::fs::read_dir(store.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(tmp_left, 0, "kill {k}: temp files left after reopen");
        for _ in 0..2 {
            let i = rng.below(acked.len() as u64) as usize;
            if let Some((id, src)) = acked.iter().nth(i) {
                check_file(&store, id, src);
            }
        }
    }
    // Everything acknowledged is there, and verify is clean.
    for (id, src) in &acked {
        check_file(&store, id, src);
    }
    let v = tessera(&store, &["verify"]);
    assert!(
        v.status.success(),
        "verify after kills: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    println!(
        "kill test: {k} kills ({killed_mid_run} before the put finished, {inside_put} inside its writes), {acked_puts} acknowledged puts of {} distinct files intact, verify clean",
        acked.len()
    );
    assert!(
        inside_put > 0,
        "none of {k} kills landed inside a put's writes: the test checked nothing"
    );
}
