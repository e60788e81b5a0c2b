use super::*;

#[test]
fn a_full_source_string_sets_every_field() {
    let c = S3Config::parse(
        "s3://disks/vm%201/root/?endpoint=http://127.0.0.1:3900/&region=garage&size=10G&object-size=1M\
         &cache-size=64M&concurrency=8&read-ahead=0&read-only&lease-timeout=500ms&lease-settle=0.2\
         &retry-timeout=3s",
    )
    .unwrap();
    assert_eq!(c.bucket, "disks");
    assert_eq!(c.prefix, "vm 1/root");
    assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
    assert_eq!(c.region.as_deref(), Some("garage"));
    assert_eq!(c.size, Some(10 << 30));
    assert_eq!(c.object_size, Some(1 << 20));
    assert_eq!(c.cache_size, 64 << 20);
    assert_eq!(c.concurrency, 8);
    assert_eq!(c.read_ahead, 0);
    assert!(c.read_only);
    assert_eq!(c.lease_timeout, Duration::from_millis(500));
    assert_eq!(c.lease_settle, Duration::from_millis(200));
    assert_eq!(c.retry_timeout, Duration::from_secs(3));
}

#[test]
fn a_bare_bucket_has_an_empty_prefix_and_defaults() {
    let c = S3Config::parse("s3://b").unwrap();
    assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b", ""));
    assert_eq!(c.cache_size, DEFAULT_CACHE_SIZE);
    assert_eq!(c.object_size, None);
    assert!(!c.read_only);
}

#[test]
fn credentials_in_the_source_are_refused_with_a_pointer_to_the_environment() {
    for key in ["access-key", "secret-key", "session-token", "aws_secret_access_key"] {
        let e = S3Config::parse(&format!("s3://b/p?{key}=x")).unwrap_err().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID") && e.contains(key), "{e}");
    }
}

#[test]
fn unknown_parameters_and_bad_values_are_refused() {
    assert!(S3Config::parse("s3://b/p?colour=red").unwrap_err().to_string().contains("unknown"));
    assert!(S3Config::parse("s3://b/p?size=ten").is_err());
    assert!(S3Config::parse("s3://b/p?size=0").is_err());
    assert!(S3Config::parse("s3://b/p?object-size=1000").is_err());
    assert!(S3Config::parse("s3://b/p?endpoint=ftp://x").is_err());
    assert!(S3Config::parse("s3://b/p?concurrency=0").is_err());
    assert!(S3Config::parse("s3:///p").is_err());
    assert!(S3Config::parse("file:///p").is_err());
}

#[test]
fn sizes_accept_binary_suffixes_and_reject_overflow() {
    assert_eq!(parse_size("size", "4096").unwrap(), 4096);
    assert_eq!(parse_size("size", "4k").unwrap(), 4096);
    assert_eq!(parse_size("size", "4KiB").unwrap(), 4096);
    assert_eq!(parse_size("size", "2GB").unwrap(), 2 << 30);
    assert_eq!(parse_size("size", "1T").unwrap(), 1 << 40);
    assert!(parse_size("size", "99999999999P").is_err());
    assert!(parse_size("size", "4X").is_err());
}
