//! Unit tests of the fault-injecting filesystem model.

use super::*;
use crate::storage::fs::Fs;

fn write(fs: &FaultStorage, rel: &str, data: &[u8], sync: bool) {
    let mut h = fs.create_new(rel).unwrap();
    h.write_all(data).unwrap();
    if sync {
        h.sync().unwrap();
    }
}

#[test]
fn power_loss_keeps_only_synced_data_and_entries() {
    let fs = FaultStorage::new("/nonexistent");
    fs.create_dir_all("a/b").unwrap();
    fs.create_dir_all("tmp").unwrap();
    fs.sync_dir("").unwrap();
    fs.sync_dir("a").unwrap();
    // Synced file, renamed, directory synced: survives whole.
    write(&fs, "tmp/x", b"hello", true);
    fs.rename("tmp/x", "a/b/x").unwrap();
    fs.sync_dir("a/b").unwrap();
    // Entry synced, data not: an empty file survives.
    write(&fs, "a/b/z", b"unsynced", false);
    let mut h = fs.create_new("a/b/w").unwrap();
    h.write_all(b"w").unwrap();
    h.sync().unwrap();
    drop(h);
    fs.sync_dir("a/b").unwrap();
    // Synced file whose rename is not synced: the rename is lost, and
    // the temp directory entry was never durable either.
    write(&fs, "tmp/y", b"world", true);
    fs.rename("tmp/y", "a/b/y").unwrap();
    // Unlinked without a directory sync: still there after the crash.
    fs.remove_file("a/b/w").unwrap();
    // Directory created but its parent not synced: lost.
    fs.create_dir_all("a/c").unwrap();

    let c = fs.crash();
    assert_eq!(c.read("a/b/x").unwrap(), b"hello");
    assert_eq!(c.read("a/b/z").unwrap(), b"");
    assert_eq!(c.read("a/b/w").unwrap(), b"w");
    assert!(!c.exists("a/b/y").unwrap());
    assert_eq!(c.list_dir("tmp").unwrap(), Vec::<String>::new());
    assert!(!c.exists("a/c").unwrap());
    assert_eq!(c.list_dir("a").unwrap(), vec!["b".to_string()]);

    let k = fs.crash_with(CrashMode::ProcessKill);
    assert_eq!(k.read("a/b/y").unwrap(), b"world");
    assert_eq!(k.read("a/b/z").unwrap(), b"unsynced");
    assert!(!k.exists("a/b/w").unwrap());
    assert!(k.exists("a/c").unwrap());
    // A crash image is entirely durable.
    let kk = k.crash();
    assert_eq!(kk.dump(), k.dump());
}

#[test]
fn partial_power_loss_lies_between_durable_and_live() {
    let fs = FaultStorage::new("/nonexistent");
    fs.create_dir_all("d").unwrap();
    fs.sync_dir("").unwrap();
    let data: Vec<u8> = (0..200u8).collect();
    let mut h = fs.create_new("d/f").unwrap();
    h.write_all(&data[..50]).unwrap();
    h.sync().unwrap();
    h.write_all(&data[50..]).unwrap();
    fs.sync_dir("d").unwrap();
    let mut seen = BTreeSet::new();
    for seed in 0..200 {
        let c = fs.crash_with(CrashMode::PowerLossPartial(seed));
        let got = c.read("d/f").unwrap();
        assert!(got.len() >= 50 && got.len() <= 200);
        let k = got.iter().zip(&data).take_while(|(a, b)| a == b).count();
        assert!(k >= 50);
        assert!(got[k..].iter().all(|&b| b == 0));
        seen.insert(got.len());
    }
    assert!(seen.len() > 10, "{seen:?}");
}

#[test]
fn faults_fire_once_or_stick_and_change_nothing() {
    let fs = FaultStorage::new("/nonexistent");
    fs.create_dir_all("d").unwrap();
    fs.inject(Fault {
        kind: Some(OpKind::Rename),
        nth: 2,
        sticky: false,
    });
    write(&fs, "d/a", b"a", true);
    fs.rename("d/a", "d/b").unwrap();
    write(&fs, "d/c", b"c", true);
    assert!(fs.rename("d/c", "d/e").is_err());
    assert!(fs.exists("d/c").unwrap() && !fs.exists("d/e").unwrap());
    fs.rename("d/c", "d/e").unwrap();
    assert_eq!(fs.failures(), 1);

    fs.inject(Fault {
        kind: None,
        nth: 3,
        sticky: true,
    });
    let mut h = fs.create_new("d/f").unwrap();
    h.write_all(b"12").unwrap();
    assert!(h.write_all(b"34").is_err());
    assert!(h.sync().is_err());
    assert!(fs.sync_dir("d").is_err());
    assert!(fs.is_dead());
    assert_eq!(fs.read("d/f").unwrap(), b"12");
    fs.revive();
    fs.sync_dir("d").unwrap();
    assert_eq!(fs.failures(), 4);
}
