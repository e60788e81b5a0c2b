//! [`LogLayer`]: one line per request and one per completion, in the shape
//! of nbdkit's log filter.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{lock, LayerError};
use crate::device::{Caps, Device, DeviceResult, Extent, Support, ZeroFlags};

/// Logs every request to a file and passes it on unchanged.
///
/// Each request gets an id (counting from 1 for the layer) and two lines,
/// one when it arrives and one when it completes, so that durations and
/// overlapping requests can be read off the log. Times are UTC with
/// microseconds; offsets and counts are hexadecimal:
///
/// ```text
/// 2024-01-01 12:00:00.000000 Open size=0x100000 read_only=0 flush=1 fua=native trim=1 zero=native fast_zero=1 cache=none extents=1 multi_conn=1
/// 2024-01-01 12:00:00.000100 Read id=1 offset=0x0 count=0x200 ...
/// 2024-01-01 12:00:00.000150 ...Read id=1 return=0 (Success)
/// 2024-01-01 12:00:00.000200 Write id=2 offset=0x200 count=0x200 fua=0 ...
/// 2024-01-01 12:00:00.000260 ...Write id=2 return=-1 (ENOSPC) error="no space left"
/// 2024-01-01 12:00:00.000300 Zero id=3 offset=0x0 count=0x1000 trim=1 fua=0 fast=0 ...
/// 2024-01-01 12:00:00.000310 ...Zero id=3 return=0 (Success)
/// 2024-01-01 12:00:00.000400 Extents id=4 offset=0x0 count=0x10000 ...
/// 2024-01-01 12:00:00.000420 ...Extents id=4 extents=[{ length=0x1000, type=data }, { length=0xf000, type=hole,zero }] return=0 (Success)
/// 2024-01-01 12:00:00.000500 Close transactions=4
/// ```
///
/// Request kinds: `Read`, `Write` (`fua`), `Flush`, `Trim` (`fua`), `Zero`
/// (`trim` = may punch holes, i.e. no `NBD_CMD_FLAG_NO_HOLE`; `fua`;
/// `fast`), `Cache`, `Extents`. Unlike nbdkit there is no connection
/// number: a layer serves all connections of an export (the server's
/// tracing spans name the connection).
///
/// Lines are buffered and written out on every flush request and when the
/// layer is dropped. A failure to write the log never fails a request; it
/// is reported once through `tracing`.
pub struct LogLayer {
    inner: Arc<dyn Device>,
    out: Mutex<BufWriter<File>>,
    next_id: AtomicU64,
    write_failed: AtomicBool,
}

impl LogLayer {
    /// Wraps `inner`, logging to `path` (created, or truncated if it exists).
    pub fn new(inner: Arc<dyn Device>, path: impl AsRef<Path>) -> Result<Self, LayerError> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| LayerError::Io { layer: "log", path: path.into(), source })?;
        let layer = Self {
            inner,
            out: Mutex::new(BufWriter::new(file)),
            next_id: AtomicU64::new(1),
            write_failed: AtomicBool::new(false),
        };
        let (c, size) = (layer.inner.caps(), layer.inner.size());
        layer.line(format_args!(
            "Open size={size:#x} read_only={} flush={} fua={} trim={} zero={} fast_zero={} cache={} extents={} multi_conn={}",
            u8::from(c.read_only),
            u8::from(c.flush),
            support(c.fua),
            u8::from(c.trim),
            support(c.zero),
            u8::from(c.fast_zero),
            support(c.cache),
            u8::from(c.extents),
            u8::from(c.multi_conn),
        ));
        Ok(layer)
    }

    /// Writes one timestamped line.
    fn line(&self, args: fmt::Arguments<'_>) {
        let stamp = timestamp(SystemTime::now());
        let mut out = lock(&self.out);
        if let Err(e) = writeln!(out, "{stamp} {args}") {
            self.report(&e);
        }
    }

    fn report(&self, e: &std::io::Error) {
        if !self.write_failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "log layer: writing the log failed");
        }
    }

    /// Logs the arrival of a request; returns its id.
    fn begin(&self, kind: &str, details: fmt::Arguments<'_>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.line(format_args!("{kind} id={id} {details}..."));
        id
    }

    /// Logs the completion of request `id`; `extra` precedes the result.
    fn end<T>(&self, kind: &str, id: u64, result: &DeviceResult<T>, extra: &str) {
        match result {
            Ok(_) => self.line(format_args!("...{kind} id={id} {extra}return=0 (Success)")),
            Err(e) => {
                let name = e.errno().name().and_then(|n| n.strip_prefix("NBD_")).unwrap_or("EIO");
                self.line(format_args!("...{kind} id={id} return=-1 ({name}) error={:?}", e.message()));
            }
        }
    }

    fn flush_log(&self) {
        if let Err(e) = lock(&self.out).flush() {
            self.report(&e);
        }
    }
}

fn support(s: Support) -> &'static str {
    match s {
        Support::None => "none",
        Support::Emulate => "emulate",
        Support::Native => "native",
    }
}

impl Drop for LogLayer {
    fn drop(&mut self) {
        let transactions = self.next_id.load(Ordering::Relaxed) - 1;
        self.line(format_args!("Close transactions={transactions}"));
        self.flush_log();
    }
}

#[async_trait]
impl Device for LogLayer {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> Caps {
        // Log lines go to a file: never run inline.
        Caps { immediate: false, ..self.inner.caps() }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let id = self.begin("Read", format_args!("offset={offset:#x} count={:#x} ", buf.len()));
        let r = self.inner.read(offset, buf).await;
        self.end("Read", id, &r, "");
        r
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> DeviceResult<()> {
        let count = data.len();
        let id = self.begin("Write", format_args!("offset={offset:#x} count={count:#x} fua={} ", u8::from(fua)));
        let r = self.inner.write(offset, data, fua).await;
        self.end("Write", id, &r, "");
        r
    }

    async fn flush(&self) -> DeviceResult<()> {
        let id = self.begin("Flush", format_args!(""));
        let r = self.inner.flush().await;
        self.end("Flush", id, &r, "");
        self.flush_log();
        r
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> DeviceResult<()> {
        let id = self.begin("Trim", format_args!("offset={offset:#x} count={length:#x} fua={} ", u8::from(fua)));
        let r = self.inner.trim(offset, length, fua).await;
        self.end("Trim", id, &r, "");
        r
    }

    async fn write_zeroes(&self, offset: u64, length: u64, f: ZeroFlags) -> DeviceResult<()> {
        let (trim, fua, fast) = (u8::from(!f.no_hole), u8::from(f.fua), u8::from(f.fast));
        let id =
            self.begin("Zero", format_args!("offset={offset:#x} count={length:#x} trim={trim} fua={fua} fast={fast} "));
        let r = self.inner.write_zeroes(offset, length, f).await;
        self.end("Zero", id, &r, "");
        r
    }

    async fn cache(&self, offset: u64, length: u64) -> DeviceResult<()> {
        let id = self.begin("Cache", format_args!("offset={offset:#x} count={length:#x} "));
        let r = self.inner.cache(offset, length).await;
        self.end("Cache", id, &r, "");
        r
    }

    async fn extents(&self, offset: u64, length: u64) -> DeviceResult<Vec<Extent>> {
        let id = self.begin("Extents", format_args!("offset={offset:#x} count={length:#x} "));
        let r = self.inner.extents(offset, length).await;
        let mut listed = String::new();
        if let Ok(list) = &r {
            let items: Vec<String> =
                list.iter().map(|e| format!("{{ length={:#x}, type={} }}", e.length, e.flags.description())).collect();
            let _ = write!(listed, "extents=[{}] ", items.join(", "));
        }
        self.end("Extents", id, &r, &listed);
        r
    }
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` in UTC.
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{s:02}.{:06}", since.subsec_micros())
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by whole
/// 400-year eras (146 097 days) counted from 0000-03-01, so that leap days
/// fall at the end of each year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u64) -> String {
        timestamp(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
    }

    #[test]
    fn timestamps_are_utc_dates_with_microseconds() {
        assert_eq!(at(0, 0), "1970-01-01 00:00:00.000000");
        assert_eq!(at(1_704_110_400, 7), "2024-01-01 12:00:00.000007");
        assert_eq!(at(951_782_400, 0), "2000-02-29 00:00:00.000000");
        assert_eq!(at(951_868_799, 999_999), "2000-02-29 23:59:59.999999");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01 00:00:00.000000");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29 23:59:59.000000");
    }

    #[test]
    fn times_before_1970_print_as_the_epoch_instead_of_failing() {
        assert_eq!(timestamp(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01 00:00:00.000000");
    }
}
