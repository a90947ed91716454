//! The lazy file system on its own: what is fsynced survives a power cut, nothing else does,
//! and a clean unmount keeps everything.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use palaver_lazyfs::{PAGE, mount_or_skip};

fn read(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    File::open(path)
        .expect("open")
        .read_to_end(&mut bytes)
        .expect("read");
    bytes
}

#[test]
fn a_power_cut_keeps_what_was_fsynced_and_nothing_else() {
    let (backing, mountpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Some(mount) = mount_or_skip(backing.path(), mountpoint.path(), "the lazyfs test") else {
        return;
    };
    let (a, b) = (mountpoint.path().join("a"), mountpoint.path().join("b"));
    let synced = vec![b'1'; 5000];
    let mut file_a = File::create(&a).expect("create a");
    file_a.write_all(&synced).expect("write a");
    file_a.sync_all().expect("fsync a");
    assert_eq!(mount.unsynced_bytes(), 0);
    let (syncs, when) = mount.syncs("a");
    assert!(syncs >= 1 && when.is_some());

    // More for A (overwriting its tail, growing it), and a new directory and file B: unsynced.
    file_a.write_all(&[b'2'; 3000]).expect("write a again");
    drop(file_a);
    std::fs::create_dir(mountpoint.path().join("d")).expect("mkdir");
    std::fs::write(&b, b"never synced").expect("write b");
    let mut expected_a = synced.clone();
    expected_a.extend_from_slice(&[b'2'; 3000]);
    assert_eq!(read(&a), expected_a, "reads see unsynced writes");
    assert_eq!(read(&b), b"never synced");
    // A: pages 1 (shared with the synced part) and 0 untouched; B: one page.
    assert_eq!(mount.unsynced().of("a"), PAGE);
    assert_eq!(mount.unsynced().of("b"), PAGE);

    // Truncation is data too: shrink A below what was synced, in memory only.
    OpenOptions::new()
        .write(true)
        .open(&a)
        .expect("open a")
        .set_len(10)
        .expect("truncate");
    assert_eq!(read(&a), synced[..10]);

    let dropped = mount.power_cut();
    assert!(dropped.total() >= 2 * PAGE, "{dropped:?}");
    assert_eq!(
        std::fs::metadata(backing.path().join("a")).unwrap().len(),
        5000
    );

    let mount = mount_or_skip(backing.path(), mountpoint.path(), "the lazyfs test").unwrap();
    assert_eq!(read(&a), synced, "exactly what was fsynced");
    assert_eq!(
        read(&b),
        b"",
        "B's name survived (metadata is durable), its data did not"
    );
    assert!(mountpoint.path().join("d").is_dir());

    // A clean unmount writes everything back.
    std::fs::write(&b, b"kept").expect("write b");
    std::fs::rename(&b, mountpoint.path().join("d/c")).expect("rename");
    assert!(mount.unsynced_bytes() > 0);
    mount.unmount().expect("unmount");
    assert_eq!(std::fs::read(backing.path().join("d/c")).unwrap(), b"kept");
    assert!(!backing.path().join("b").exists());
}
