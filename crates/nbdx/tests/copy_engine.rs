//! `nbdx::copy` between an in-process nbdx server and temporary files:
//! data and holes survive, holes are never sent as data, sparse files stay
//! sparse, multi-conn is used when advertised, sizes are checked first.
//! With a stream on one end (a FIFO stands in for a pipe on standard input
//! or output) bytes come out in order, zero ranges as zero bytes, and a
//! streamed input fills an export or a new sparse file.

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
const PIECES: [(u64, usize); 4] = [(0, 4096), (3 * MIB + 512, 70_000), (9 * MIB, 1 << 20), (16 * MIB - 4096, 4096)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_export_copies_to_a_new_file_that_stays_sparse() {
    let src = ram_with(16 * MIB, &PIECES).await;
    let srv = serve(vec![Export::from_arc("disk", src.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    let report = run_copy(&srv.endpoint("disk"), &Endpoint::File(out.clone()), &CopyOptions::default()).await.unwrap();
    assert_eq!(report.bytes, 16 * MIB);
    assert_eq!(std::fs::read(&out).unwrap(), contents(&*src).await);
    // The RAM disk reports 64 KiB pages: at most 4 pages of data per piece.
    assert!(report.data <= 7 * (64 << 10) + MIB, "{} bytes sent as data", report.data);
    assert!(allocated(&out) <= 4 * MIB, "the copy uses {} bytes on disk", allocated(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_file_copies_to_a_dirty_export_whose_holes_are_zeroed_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    file_with(&src, 16 * MIB, &PIECES);
    let dst = Arc::new(MemoryDevice::new(16 * MIB));
    dst.write(0, &vec![0xee; (16 * MIB) as usize], false).await.unwrap();
    let srv = serve(vec![Export::from_arc("", dst.clone())]);
    let report = run_copy(&Endpoint::File(src.clone()), &srv.endpoint(""), &CopyOptions::default()).await.unwrap();
    assert_eq!(contents(&*dst).await, std::fs::read(&src).unwrap(), "old bytes survived in a hole");
    assert!(report.data < 4 * MIB, "{} bytes sent as data for 1.1 MiB of data", report.data);
    assert_eq!(report.destination_connections, 4, "the RAM disk advertises multi-conn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_data_blocks_are_detected_and_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("zeroes.img"), dir.path().join("out.img"));
    // Allocated zeroes: SEEK_DATA calls them data, only reading tells.
    std::fs::write(&src, vec![0u8; (8 * MIB) as usize]).unwrap();
    let report =
        run_copy(&Endpoint::File(src.clone()), &Endpoint::File(out.clone()), &CopyOptions::default()).await.unwrap();
    assert_eq!((report.bytes, report.data), (8 * MIB, 0));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 8 * MIB);
    assert_eq!(allocated(&out), 0, "zero blocks were written to the new file");
    let no_detection = CopyOptions { sparse: 0, ..CopyOptions::default() };
    let again = run_copy(&Endpoint::File(src), &Endpoint::File(out.clone()), &no_detection).await.unwrap();
    assert_eq!(again.data, 8 * MIB, "with -S 0 every byte is written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_to_server_uses_n_connections_only_where_multi_conn_is_advertised() {
    let src = ram_with(32 * MIB, &[(0, 8 << 20), (20 * MIB, 1 << 20)]).await;
    let single = Arc::new(MemoryDevice::new(32 * MIB));
    let multi = Arc::new(MemoryDevice::new(32 * MIB));
    let srv = serve(vec![
        Export::from_arc("src", src.clone()),
        Export::new("single", SingleConn(single.clone())),
        Export::from_arc("multi", multi.clone()),
    ]);
    let opts = CopyOptions { connections: 3, requests: 8, ..CopyOptions::default() };
    let report = run_copy(&srv.endpoint("src"), &srv.endpoint("multi"), &opts).await.unwrap();
    assert_eq!((report.source_connections, report.destination_connections, report.workers), (3, 3, 24));
    assert_eq!(contents(&*multi).await, contents(&*src).await);
    let report = run_copy(&srv.endpoint("src"), &srv.endpoint("single"), &opts).await.unwrap();
    assert_eq!((report.destination_connections, report.workers), (1, 8));
    assert_eq!(contents(&*single).await, contents(&*src).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_smaller_than_the_source_fails_before_any_byte_moves() {
    let src = ram_with(8 * MIB, &[(0, 4096)]).await;
    let small = Arc::new(MemoryDevice::new(4 * MIB));
    small.write(0, &[7u8; 4096], false).await.unwrap();
    let srv = serve(vec![Export::from_arc("src", src), Export::from_arc("small", small.clone())]);
    let err = run_copy(&srv.endpoint("src"), &srv.endpoint("small"), &CopyOptions::default()).await.unwrap_err();
    assert!(matches!(err, CopyError::TooSmall { source_size: 8388608, destination_size: 4194304, .. }), "{err}");
    assert!(err.to_string().contains("smaller than the source"), "{err}");
    assert_eq!(&contents(&*small).await[..4096], &[7u8; 4096], "the destination was written to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_destination_file_keeps_its_tail_and_gets_holes_where_the_source_has_them() {
    let src = ram_with(4 * MIB, &[(MIB, 4096)]).await;
    let srv = serve(vec![Export::from_arc("", src.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.img");
    std::fs::write(&out, vec![0x55u8; (6 * MIB) as usize]).unwrap();
    run_copy(&srv.endpoint(""), &Endpoint::File(out.clone()), &CopyOptions::default()).await.unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len() as u64, 6 * MIB);
    assert_eq!(&got[..(4 * MIB) as usize], &contents(&*src).await[..]);
    assert!(got[(4 * MIB) as usize..].iter().all(|&b| b == 0x55), "the tail beyond the source changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_extents_everything_is_read_and_zero_detection_keeps_the_copy_sparse() {
    let src = ram_with(8 * MIB, &PIECES[..2]).await;
    let srv = serve(vec![Export::from_arc("", src.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    let opts = CopyOptions { extents: false, requests: 2, connections: 1, ..CopyOptions::default() };
    let report = run_copy(&srv.endpoint(""), &Endpoint::File(out.clone()), &opts).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), contents(&*src).await);
    assert!(report.data <= 80 * 1024, "{} bytes written as data", report.data);
    assert!(allocated(&out) <= MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ends_are_refused_with_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.img");
    file_with(&file, MIB, &[]);
    let srv = serve(vec![Export::new("only", MemoryDevice::new(MIB))]);
    let cases = [
        (Endpoint::Null, Endpoint::File(file.clone()), "null: can only be the destination"),
        (Endpoint::File(file.clone()), Endpoint::File(file.clone()), "are the same file"),
        (srv.endpoint("missing"), Endpoint::Null, "export 'missing' not found"),
        (Endpoint::File(dir.path().join("absent")), Endpoint::Null, "No such file or directory"),
        (Endpoint::parse("nbd+unix:///?socket=/nonexistent/s").unwrap(), Endpoint::Null, "cannot connect"),
    ];
    for (src, dst, want) in cases {
        let err = run_copy(&src, &dst, &CopyOptions::default()).await.unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should say {want:?}");
        assert!(!err.contains('\n'), "{err:?} is not one line");
    }
    for bad in ["nbd://host:notaport/", "http://example.com/disk", ""] {
        assert!(Endpoint::parse(bad).is_err(), "{bad:?} parsed");
    }
    let ro = serve(vec![Export::new("", MemoryDevice::new(MIB)).with_read_only(true)]);
    let err = run_copy(&Endpoint::File(file), &ro.endpoint(""), &CopyOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}

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
