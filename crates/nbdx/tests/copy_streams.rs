//! `nbdx::copy` with a stream on one end (a FIFO stands in for a pipe on
//! standard input or output): bytes come out in order, zero ranges as
//! zero bytes; a streamed input fills an export or a new sparse file.

mod copy_support;

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use copy_support::*;
use nbdx::copy::{CopyError, CopyOptions, Endpoint};
use nbdx::device::Device;
use nbdx::{Export, MemoryDevice};

const MIB: u64 = 1 << 20;

fn fifo(dir: &Path) -> PathBuf {
    let path = dir.join("pipe");
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    path
}

/// Reads the FIFO to its end in a thread.
fn drain(path: PathBuf) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        std::fs::File::open(path).unwrap().read_to_end(&mut out).unwrap();
        out
    })
}

/// Writes `data` into the FIFO in uneven pieces, in a thread.
fn feed(path: PathBuf, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        for piece in data.chunks(100_003) {
            if f.write_all(piece).is_err() {
                return; // the reader gave up (the too-small case)
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_streams_out_in_order_with_holes_as_zero_bytes() {
    let src = ram_with(12 * MIB, &[(0, 5000), (5 * MIB, 1 << 20), (12 * MIB - 65536, 65536)]).await;
    let srv = serve(vec![Export::from_arc("", src.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(dir.path());
    let reader = drain(pipe.clone());
    let opts = CopyOptions { request_size: 64 << 10, ..CopyOptions::default() };
    let report = run_copy(&srv.endpoint(""), &Endpoint::File(pipe), &opts).await.unwrap();
    assert_eq!(report.bytes, 12 * MIB);
    assert!(reader.join().unwrap() == contents(&*src).await, "the stream differs from the export");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fills_an_export_and_zero_blocks_become_write_zeroes() {
    let dst = Arc::new(MemoryDevice::new(8 * MIB));
    dst.write(0, &vec![0xaa; (8 * MIB) as usize], false).await.unwrap();
    let srv = serve(vec![Export::from_arc("", dst.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(dir.path());
    let mut data = vec![0u8; (6 * MIB) as usize + 777];
    data[..MIB as usize].copy_from_slice(&pattern(MIB as usize, 3));
    let writer = feed(pipe.clone(), data.clone());
    let report = run_copy(&Endpoint::File(pipe), &srv.endpoint(""), &CopyOptions::default()).await.unwrap();
    writer.join().unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    assert!(report.data < 2 * MIB, "{} bytes written as data", report.data);
    let got = contents(&*dst).await;
    assert!(got[..data.len()] == data[..], "the export differs from the stream");
    assert!(got[data.len()..].iter().all(|&b| b == 0xaa), "bytes past the stream's end changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_into_a_new_file_gives_a_sparse_file_of_the_streams_length() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(dir.path());
    let out = dir.path().join("out.img");
    let mut data = vec![0u8; (10 * MIB) as usize + 12345];
    data[(4 * MIB) as usize..(5 * MIB) as usize].copy_from_slice(&pattern(MIB as usize, 9));
    let writer = feed(pipe.clone(), data.clone());
    run_copy(&Endpoint::File(pipe), &Endpoint::File(out.clone()), &CopyOptions::default()).await.unwrap();
    writer.join().unwrap();
    assert!(std::fs::read(&out).unwrap() == data, "the file differs from the stream");
    assert!(allocated(&out) <= 2 * MIB, "the file uses {} bytes", allocated(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_export_fails_with_destination_too_small() {
    let srv = serve(vec![Export::new("", MemoryDevice::new(MIB))]);
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(dir.path());
    let writer = feed(pipe.clone(), pattern((2 * MIB) as usize, 1));
    let err = run_copy(&Endpoint::File(pipe), &srv.endpoint(""), &CopyOptions::default()).await.unwrap_err();
    assert!(matches!(err, CopyError::TooSmall { destination_size: 1048576, .. }), "{err}");
    drop(writer); // it ends once the copy closed the pipe
}
