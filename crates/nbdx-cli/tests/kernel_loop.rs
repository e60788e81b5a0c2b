//! `nbdx loop`, discards reaching a served file, and a device that survives
//! a server restart, against the real NBD driver (root and
//! `/sys/module/nbd`, else `SKIP`). The shell snippets use only what
//! busybox has (mke2fs, mount, dd, sha256sum, blkdiscard).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;

const CHUNK: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// mke2fs, mount, write three files, checksum, umount, remount, verify.
const MAKE_FS: &str = r#"set -e
mke2fs -F "$dev" >/dev/null
mkdir -p "$MNT"
mount -t ext4 "$dev" "$MNT"
for i in 1 2 3; do dd if=/dev/urandom of="$MNT/f$i" bs=64k count=$((i * 8)) 2>/dev/null; done
(cd "$MNT" && sha256sum f1 f2 f3 > "$SUMS")
umount "$MNT"
mount -t ext4 "$dev" "$MNT"
(cd "$MNT" && sha256sum -c "$SUMS")
umount "$MNT"
"#;

/// Mounts again (a later `nbdx loop` of the same file) and verifies.
const VERIFY_FS: &str = r#"set -e
mount -t ext4 -o ro "$dev" "$MNT"
(cd "$MNT" && sha256sum -c "$SUMS") || { umount "$MNT"; exit 1; }
umount "$MNT"
"#;

#[test]
fn loop_run_holds_a_filesystem_that_survives_remounts_and_a_second_session() {
    let Some(env) = kernel_env() else { return };
    let before = started_devices();
    let image = env.path("fs.img");
    let image = image.to_str().unwrap();
    let with_fs_env = |script: &str, extra: &[&str]| {
        let mut args = vec!["loop", image];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--run", script]);
        let mut command = env.nbdx(args);
        command.env("MNT", env.path("mnt")).env("SUMS", env.path("sums"));
        run(command)
    };
    let made = with_fs_env(MAKE_FS, &["--size", "64M"]);
    let dev = made.ok();
    assert!(dev.starts_with("/dev/nbd"), "loop prints the device first: {dev}");
    assert!(made.stdout.contains("f3: OK"), "checksums after the remount: {made:?}");
    assert_eq!(started_devices(), before, "detached after the command");
    assert_eq!(std::fs::metadata(image).unwrap().len(), 64 << 20);

    let verified = with_fs_env(VERIFY_FS, &[]);
    assert!(verified.status.success() && verified.stdout.contains("f1: OK"), "{verified:?}");

    let exit = run(env.nbdx(["loop", "memory:8M", "--run", r#"test -b "$dev" && exit 7"#]));
    assert_eq!(exit.status.code(), Some(7), "the command's exit status: {exit:?}");
    assert_eq!(started_devices(), before);
}

#[test]
fn loop_without_run_serves_until_sigterm_then_detaches() {
    let Some(env) = kernel_env() else { return };
    let before = started_devices();
    let mut child = env.nbdx(["loop", "memory:16M", "-C", "2"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let dev = line.trim().to_owned();
    let device = Direct::open(&dev, true).unwrap();
    device.write_at(CHUNK as u64, &pattern(CHUNK, 1)).unwrap();
    assert_eq!(device.read_at(CHUNK as u64, CHUNK).unwrap(), pattern(CHUNK, 1));
    drop(device);
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill with the pid of our own child, not yet reaped, and SIGTERM.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_bounded(&mut child, WAIT);
    assert!(status.success(), "{status}");
    assert_eq!(started_devices(), before, "{dev} detached");
}

#[test]
fn discard_on_the_device_punches_holes_in_the_served_file() {
    let Some(env) = kernel_env() else { return };
    let file = env.path("disk.img");
    make_file(&file, 32 << 20, 0, 0);
    let sock = env.path("nbd.sock");
    let server = ServeProcess::start(&env, &[file.to_str().unwrap(), "-U", sock.to_str().unwrap()]);
    let dev = run(env.nbdx(["attach", &server.uri])).ok();
    let device = Direct::open(&dev, true).unwrap();
    for i in 0..16u32 {
        device.write_at(u64::from(i) * CHUNK as u64, &pattern(CHUNK, i)).unwrap();
    }
    drop(device);
    let allocated = std::fs::metadata(&file).unwrap().blocks() * 512;
    println!("{} allocated after writing 16 MiB", allocated);
    assert!(allocated >= 16 << 20, "{allocated}");

    let mut discard = std::process::Command::new("blkdiscard");
    discard.arg(&dev);
    let out = run(discard);
    assert!(out.status.success(), "{out:?}");
    let left = std::fs::metadata(&file).unwrap().blocks() * 512;
    println!("{left} allocated after blkdiscard");
    assert!(left < allocated / 4, "the discard freed the file's blocks: {allocated} -> {left}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32 << 20, "holes, not truncation");
    run(env.nbdx(["detach", &dev])).ok();
}

#[test]
fn with_a_dead_timeout_the_device_survives_a_server_restart() {
    let Some(env) = kernel_env() else { return };
    let file = env.path("disk.img");
    make_file(&file, 16 << 20, 0, 0);
    let serve_args = [file.to_str().unwrap().to_owned(), "-U".into(), env.path("nbd.sock").to_str().unwrap().into()];
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let mut server = ServeProcess::start(&env, &serve_args);
    let dev = run(env.nbdx(["attach", &server.uri, "--dead-timeout", "60"])).ok();
    let log = env.path(&format!("nbd{}.log", index_of(&dev)));
    let monitor = status(&env, &dev)["monitor"].as_u64().expect("a monitor watches the device");
    Direct::open(&dev, true).unwrap().write_at(0, &pattern(CHUNK, 1)).unwrap();

    server.kill();
    let logged = |text: &str| std::fs::read_to_string(&log).unwrap_or_default().contains(text);
    wait_for("the monitor to see the link die", WAIT, || logged("connection to the server lost"));
    // Issued while the server is down: the writer blocks in the kernel.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let path = dev.clone();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let written = Direct::open(&path, true).and_then(|d| d.write_at(4 << 20, &pattern(CHUNK, 2)));
        let _ = done_tx.send(written.map_err(|e| e.to_string()));
    });
    let tid = tid_rx.recv().unwrap();
    wait_for("the writer to block in the kernel", WAIT, || thread_state(tid) == Some('D'));
    assert!(done_rx.try_recv().is_err(), "the write cannot complete without a server");

    let _server = ServeProcess::start(&env, &serve_args);
    let written = done_rx.recv_timeout(WAIT).expect("the write completed after the restart");
    assert_eq!(written, Ok(()));
    assert_eq!(file_bytes(&file, 4 << 20, CHUNK), pattern(CHUNK, 2), "the write reached the restarted server");
    assert_eq!(file_bytes(&file, 0, CHUNK), pattern(CHUNK, 1), "the data from before the restart");
    assert!(logged("reconnected to the server"), "{}", std::fs::read_to_string(&log).unwrap());

    run(env.nbdx(["detach", &dev])).ok();
    assert_eq!(status(&env, &dev)["monitor"], serde_json::Value::Null, "monitor {monitor} exited");
    assert!(logged("monitor exits"));
    println!("monitor log:\n{}", std::fs::read_to_string(&log).unwrap());
}

/// The state letter of a thread of this process (R, S, D, ...).
fn thread_state(tid: libc::pid_t) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}
