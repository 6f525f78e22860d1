//! What S3 puts on the wire around the requests: error documents and their mapping to
//! [`ErrorKind`], the XML answers rusty-s3 has no parser for (ListMultipartUploads,
//! CopyObject), ETags, and the `x-amz-meta-mtime` / `x-amz-meta-mode` forms of rclone and
//! s3fs. All XML goes through quick-xml's serde reader.

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::remote::http::excerpt;
use crate::remote::{ErrorKind, Result, TargetError};

/// The user metadata we write and read: mtime (`x-amz-meta-mtime`) and mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Modification time, ms since the epoch.
    pub mtime_ms: Option<i64>,
    /// `st_mode` as s3fs writes it (decimal, file type bits included).
    pub mode: Option<u32>,
}

/// An S3 error document (`<Error><Code>…</Code><Message>…</Message></Error>`), and also the
/// one field we need of a 200 answer that may be one (CompleteMultipartUpload, CopyObject).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorDoc {
    #[serde(rename = "Code")]
    pub(super) code: Option<String>,
    #[serde(rename = "Message")]
    pub(super) message: Option<String>,
    #[serde(rename = "ETag")]
    pub(super) etag: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListUploadsDoc {
    #[serde(rename = "Upload", default)]
    pub(super) uploads: Vec<UploadDoc>,
    #[serde(rename = "IsTruncated", default)]
    pub(super) is_truncated: Option<String>,
    #[serde(rename = "NextKeyMarker")]
    pub(super) next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker")]
    pub(super) next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct UploadDoc {
    #[serde(rename = "Key")]
    pub(super) key: String,
    #[serde(rename = "UploadId")]
    pub(super) upload_id: String,
    /// When the upload was created (RFC 3339), where the server says.
    #[serde(rename = "Initiated", default)]
    pub(super) initiated: Option<String>,
}

/// Map an S3 refusal to an error category: by the S3 error code first, then the status.
pub fn s3_error(what: &str, status: StatusCode, body: &[u8]) -> TargetError {
    let doc: ErrorDoc = quick_xml::de::from_reader(body).unwrap_or_default();
    let code = doc.code.unwrap_or_default();
    let kind = match code.as_str() {
        "AccessDenied"
        | "SignatureDoesNotMatch"
        | "InvalidAccessKeyId"
        | "ExpiredToken"
        | "InvalidToken"
        | "AuthorizationHeaderMalformed"
        | "RequestTimeTooSkewed" => ErrorKind::Auth,
        "NoSuchKey" | "NoSuchBucket" | "NoSuchUpload" => ErrorKind::NotFound,
        "EntityTooLarge" => ErrorKind::TooLarge,
        "QuotaExceeded" => ErrorKind::Quota,
        "KeyTooLongError" | "InvalidObjectName" => ErrorKind::InvalidName,
        "PreconditionFailed" => ErrorKind::Conflict,
        "NotImplemented" => ErrorKind::Unsupported,
        "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout" => {
            ErrorKind::Unavailable
        }
        _ => match status.as_u16() {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            409 | 412 => ErrorKind::Conflict,
            413 => ErrorKind::TooLarge,
            501 => ErrorKind::Unsupported,
            500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Protocol,
        },
    };
    let detail = match (code.is_empty(), doc.message) {
        (false, Some(m)) => format!("{code}: {m}"),
        (false, None) => code,
        (true, _) => excerpt(&String::from_utf8_lossy(body)),
    };
    let hint = if kind == ErrorKind::Auth {
        " — the S3 keys were refused; check them"
    } else {
        ""
    };
    TargetError::new(
        kind,
        format!("{what}: server answered {status}: {detail}{hint}"),
    )
}

pub(super) fn xml_error(what: &str, e: impl std::fmt::Display, body: &[u8]) -> TargetError {
    TargetError::protocol(format!(
        "{what}: the server's answer is not the expected XML ({e}): {}",
        excerpt(&String::from_utf8_lossy(body))
    ))
}

/// The ETag without the quotes S3 puts around it.
pub fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

/// A plain MD5 ETag (a single-part object's): 32 hex digits, lowercased.
pub fn etag_md5(etag: &str) -> Option<String> {
    let e = unquote(etag);
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then(|| e.to_ascii_lowercase())
}

/// The ETag S3 gives an object completed from parts with these (plain MD5) ETags: the MD5
/// of the part MD5s, then `-N`. `None` when a part's ETag is not an MD5.
pub fn multipart_etag(part_etags: &[String]) -> Option<String> {
    use md5::Digest as _;
    let mut h = md5::Md5::new();
    for e in part_etags {
        h.update(hex::decode(etag_md5(e)?).ok()?);
    }
    Some(format!(
        "{}-{}",
        hex::encode(h.finalize()),
        part_etags.len()
    ))
}

/// `x-amz-meta-mtime` as rclone writes it: Unix seconds with nine decimals.
pub fn format_mtime(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1000, (a % 1000) * 1_000_000)
}

/// `x-amz-meta-mtime` in rclone's fractional form or s3fs's integer seconds, as ms.
pub fn parse_mtime(v: &str) -> Option<i64> {
    let v = v.trim();
    let (negative, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let total = secs.checked_mul(1000)?.checked_add(ms)?;
    Some(if negative { -total } else { total })
}

/// Whether an answer's ETag can be an MD5 of the data: not with KMS or customer-key
/// server-side encryption.
pub(super) fn etag_can_be_md5(h: &HeaderMap) -> bool {
    let kms = h
        .get("x-amz-server-side-encryption")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("aws:kms"));
    !kms && !h.contains_key("x-amz-server-side-encryption-customer-algorithm")
}

/// The user metadata of a HeadObject/GetObject answer (header names are case-insensitive).
pub(super) fn meta_from_headers(h: &HeaderMap) -> ObjectMeta {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    ObjectMeta {
        mtime_ms: get("x-amz-meta-mtime").and_then(parse_mtime),
        mode: get("x-amz-meta-mode").and_then(|m| m.trim().parse().ok()),
    }
}

/// RFC 3339 (listings) or HTTP date (headers) as ms since the epoch.
pub(super) fn parse_time(s: &str) -> i64 {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return t.as_millisecond();
    }
    jiff::fmt::rfc2822::parse(s)
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(0)
}

/// The signed headers of an upload: the metadata we keep.
pub(super) fn meta_headers(m: &ObjectMeta) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if let Some(ms) = m.mtime_ms {
        v.push(("x-amz-meta-mtime", format_mtime(ms)));
    }
    if let Some(mode) = m.mode {
        v.push(("x-amz-meta-mode", mode.to_string()));
    }
    v
}

/// `x-amz-copy-source`: `bucket/key`, the key URL-encoded as a path.
pub(super) fn copy_source(bucket: &str, key: &str) -> String {
    const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!(
        "{bucket}/{}",
        percent_encoding::utf8_percent_encode(key, PATH)
    )
}

/// A CopyObject/UploadPartCopy answer: `<CopyObjectResult><ETag>` or, despite the 200, an
/// error document.
pub(super) fn check_copy_answer(what: &str, body: &[u8]) -> Result<String> {
    let doc: ErrorDoc = quick_xml::de::from_reader(body).map_err(|e| xml_error(what, e, body))?;
    if doc.code.is_some() {
        return Err(s3_error(what, StatusCode::OK, body));
    }
    doc.etag
        .map(|e| unquote(&e))
        .ok_or_else(|| xml_error(what, "no ETag", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtime_forms() {
        assert_eq!(format_mtime(1_700_000_000_123), "1700000000.123000000");
        assert_eq!(parse_mtime("1700000000.123000000"), Some(1_700_000_000_123));
        assert_eq!(parse_mtime("1700000000.5"), Some(1_700_000_000_500));
        assert_eq!(parse_mtime("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_mtime(" 1700000000 "), Some(1_700_000_000_000));
        assert_eq!(parse_mtime("soon"), None);
        assert_eq!(parse_mtime("1.x"), None);
        assert_eq!(parse_mtime(&format_mtime(-1500)), Some(-1500));
        assert_eq!(parse_mtime(&format_mtime(-500)), Some(-500));
    }

    #[test]
    fn error_documents_map_to_kinds() {
        let doc = |code: &str| {
            format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")
        };
        let k = |status: u16, code: &str| {
            s3_error(
                "x",
                StatusCode::from_u16(status).unwrap(),
                doc(code).as_bytes(),
            )
            .kind
        };
        assert_eq!(k(403, "SignatureDoesNotMatch"), ErrorKind::Auth);
        assert_eq!(k(403, "InvalidAccessKeyId"), ErrorKind::Auth);
        assert_eq!(k(404, "NoSuchKey"), ErrorKind::NotFound);
        assert_eq!(k(400, "EntityTooLarge"), ErrorKind::TooLarge);
        assert_eq!(k(503, "SlowDown"), ErrorKind::Unavailable);
        assert_eq!(k(400, "Weird"), ErrorKind::Protocol);
        let e = s3_error("x", StatusCode::FORBIDDEN, b"<html>no</html>");
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.message.contains("<html>"), "{}", e.message);
    }

    #[test]
    fn copy_answers() {
        let ok = br#"<CopyObjectResult><LastModified>2009-10-12T17:50:30.000Z</LastModified><ETag>"9b2cf535f27731c974343645a3985328"</ETag></CopyObjectResult>"#;
        assert_eq!(
            check_copy_answer("c", ok).unwrap(),
            "9b2cf535f27731c974343645a3985328"
        );
        let bad = b"<Error><Code>InternalError</Code><Message>x</Message></Error>";
        assert_eq!(
            check_copy_answer("c", bad).unwrap_err().kind,
            ErrorKind::Unavailable
        );
        assert_eq!(copy_source("b", "a b/c+d"), "b/a%20b/c%2Bd");
    }

    #[test]
    fn etags() {
        assert_eq!(
            etag_md5("\"5D41402ABC4B2A76B9719D911017C592\"").as_deref(),
            Some("5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(etag_md5("\"5d41402abc4b2a76b9719d911017c592-2\""), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("2009-10-12T17:50:30.000Z"), 1_255_369_830_000);
        assert_eq!(
            parse_time("Mon, 12 Oct 2009 17:50:30 GMT"),
            1_255_369_830_000
        );
    }
}
