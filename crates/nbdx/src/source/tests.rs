use nbdx_proto::Errno;

use super::*;

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

#[test]
fn sizes_are_bytes_or_iec_multiples_with_optional_b_or_ib() {
    let table = [
        ("0", 0),
        ("512", 512),
        ("007", 7),
        ("3B", 3),
        ("1K", K),
        ("1k", K),
        ("4KiB", 4 * K),
        ("4kb", 4 * K),
        ("64M", 64 * M),
        ("1G", G),
        ("1GiB", G),
        ("1GB", G),
        ("2T", 2 << 40),
        ("1P", 1 << 50),
        ("8191P", 8191 << 50),
        ("9223372036854775807", i64::MAX as u64),
    ];
    for (text, bytes) in table {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
}

#[test]
fn invalid_sizes_are_refused_with_the_reason() {
    let invalid = |s: &str| SizeError::Invalid(s.to_owned());
    let unit = |s: &str, u: &str| SizeError::UnknownUnit { text: s.to_owned(), unit: u.to_owned() };
    let table = [
        ("", SizeError::Empty),
        ("-1", SizeError::Negative("-1".into())),
        ("-1G", SizeError::Negative("-1G".into())),
        ("abc", invalid("abc")),
        ("G", invalid("G")),
        ("+1", invalid("+1")),
        (" 1G", invalid(" 1G")),
        ("1 G", invalid("1 G")),
        ("1.5G", invalid("1.5G")),
        ("1_000", invalid("1_000")),
        ("1X", unit("1X", "X")),
        ("1E", unit("1E", "E")),
        ("1KiBB", unit("1KiBB", "KiBB")),
        ("1iB", unit("1iB", "iB")),
        ("8192P", SizeError::TooLarge("8192P".into())),
        ("9223372036854775808", SizeError::TooLarge("9223372036854775808".into())),
        ("18446744073709551616", SizeError::TooLarge("18446744073709551616".into())),
        ("99999999999999999999999P", SizeError::TooLarge("99999999999999999999999P".into())),
    ];
    for (text, error) in table {
        assert_eq!(parse_size(text), Err(error), "{text}");
    }
}

#[test]
fn sizes_format_in_the_largest_exact_unit() {
    for (bytes, text) in [(0, "0"), (1000, "1000"), (K, "1K"), (1536 * M, "1536M"), (G, "1G"), (3 << 50, "3P")] {
        assert_eq!(format_size(bytes), text);
        assert_eq!(parse_size(text), Ok(bytes));
    }
}

#[test]
fn sources_parse_by_prefix_and_anything_else_is_a_path() {
    let file = |p: &str| Source::File { path: p.into() };
    let table = [
        ("memory:1G", Source::Memory { size: G }),
        ("memory:0", Source::Memory { size: 0 }),
        ("null:512", Source::Null { size: 512 }),
        ("null:8191P", Source::Null { size: 8191 << 50 }),
        ("file:/tmp/disk.img", file("/tmp/disk.img")),
        ("file:memory:1G", file("memory:1G")),
        ("/dev/sda", file("/dev/sda")),
        ("disk.img", file("disk.img")),
        ("./memory:1G", file("./memory:1G")),
        ("a:b", file("a:b")),
        ("memory", file("memory")),
        ("./x://y", file("./x://y")),
    ];
    for (text, source) in table {
        assert_eq!(Source::parse(text).unwrap(), source, "{text}");
        assert_eq!(text.parse::<Source>().unwrap(), source, "{text}");
    }
}

#[test]
fn malformed_sources_are_refused_with_a_one_line_message() {
    let table = [
        ("", "empty source: expected memory:SIZE, null:SIZE, file:PATH or PATH"),
        ("memory:", "memory:: empty size: expected bytes, or a number with a K, M, G, T or P suffix"),
        ("memory:lots", "memory:lots: invalid size `lots`: expected bytes, or a whole number with a K, M, G, T or P suffix"),
        ("null:-1", "null:-1: size `-1` is negative"),
        ("memory:1Q", "memory:1Q: invalid size `1Q`: unknown unit `Q` (expected B, K, M, G, T or P, optionally followed by B or iB)"),
        ("file:", "file:: missing path after `file:`"),
        ("gs://bucket/key", "gs://bucket/key: unknown source type `gs://` (expected memory:SIZE, null:SIZE, file:PATH or PATH)"),
        ("nbd+unix://x", "nbd+unix://x: unknown source type `nbd+unix://` (expected memory:SIZE, null:SIZE, file:PATH or PATH)"),
    ];
    for (text, message) in table {
        let error = Source::parse(text).unwrap_err();
        assert_eq!(error.to_string(), message, "{text}");
        assert!(!message.contains('\n'));
    }
    assert!(matches!(Source::parse("memory:9999P"), Err(SourceError::Size { error: SizeError::TooLarge(_), .. })));
}

#[test]
fn the_canonical_text_parses_back_to_the_same_source() {
    let table = [
        ("memory:1G", "memory:1G"),
        ("memory:1GiB", "memory:1G"),
        ("memory:1073741824", "memory:1G"),
        ("null:1536MiB", "null:1536M"),
        ("null:1000", "null:1000"),
        ("/dev/sda", "file:/dev/sda"),
        ("file:rel/disk.img", "file:rel/disk.img"),
    ];
    for (text, canonical) in table {
        let source = Source::parse(text).unwrap();
        assert_eq!(source.to_string(), canonical);
        assert_eq!(Source::parse(canonical).unwrap(), source);
    }
}

#[test]
fn the_default_is_a_one_gib_ram_disk() {
    assert_eq!(Source::default(), Source::parse(DEFAULT_SOURCE).unwrap());
    assert_eq!(Source::default().to_string(), "memory:1G");
}

#[tokio::test]
async fn memory_and_null_sources_open_with_their_size_and_mode() {
    let memory = Source::parse("memory:1M").unwrap().open(false).unwrap();
    assert_eq!((memory.size(), memory.caps().read_only), (M, false));
    memory.write(5, &[1, 2], false).await.unwrap();
    let mut buf = [0; 2];
    memory.read(5, &mut buf).await.unwrap();
    assert_eq!(buf, [1, 2]);

    let read_only = Source::parse("memory:1M").unwrap().open(true).unwrap();
    assert_eq!(read_only.write(0, &[1], false).await.unwrap_err().errno(), Errno::EPERM);
    let null = Source::parse("null:4K").unwrap().open(true).unwrap();
    assert_eq!((null.size(), null.caps().read_only), (4 * K, true));
}

#[tokio::test]
async fn file_sources_open_the_file_with_its_size() {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.as_file().set_len(12_345).unwrap();
    let text = tmp.path().to_str().unwrap();
    for source in [Source::parse(text).unwrap(), Source::parse(&format!("file:{text}")).unwrap()] {
        let dev = source.open(false).unwrap();
        assert_eq!((dev.size(), dev.caps().read_only), (12_345, false));
        dev.write(12_344, &[7], false).await.unwrap();
    }
    assert!(Source::parse(text).unwrap().open(true).unwrap().caps().read_only);
}

fn open_error(text: &str, read_only: bool) -> SourceError {
    match Source::parse(text).unwrap().open(read_only) {
        Ok(dev) => panic!("{text} opened, size {}", dev.size()),
        Err(error) => error,
    }
}

#[test]
fn opening_a_missing_or_unsuitable_file_names_the_source_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("{}/nope", dir.path().display());
    let error = open_error(&missing, false);
    assert_eq!(error.to_string(), format!("file:{missing}: No such file or directory"));
    assert!(matches!(&error, SourceError::Open { error, .. } if error.kind() == io::ErrorKind::NotFound));

    let error = open_error("/dev/null", true);
    assert_eq!(error.to_string(), "file:/dev/null: not a regular file or block device");
    let error = open_error(&dir.path().display().to_string(), false);
    assert_eq!(error.to_string(), format!("file:{}: Is a directory", dir.path().display()));
}
