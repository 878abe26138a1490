//! Path canonicalisation, done once before routing and before any plugin
//! decides anything; the upstream receives the same canonical path.
//!
//! - `%XX` of an unreserved character (letters, digits, `-._~`) is decoded;
//!   every other escape is kept, with upper-case hex, and never decoded
//!   twice (`%252F` stays `%252F`).
//! - An encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, an encoded NUL and
//!   malformed escapes are refused: a backend that decodes them would see
//!   a different path than the one the gateway matched.
//! - Runs of `/` collapse to one; `.` and `..` segments are resolved, and a
//!   `..` that would climb above the root is refused.
//! - `;` and everything else is kept literally, except that a `.` or `..`
//!   segment carrying `;` parameters (`/..;x/`) is refused: servlet
//!   containers strip the parameters and resolve it as a dot-segment, so
//!   it would reach a different resource than the one the gateway matched.
//! - Bytes outside ASCII are kept as they are.

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with /")]
    NotAbsolute,
    #[error("encoded path separators (%2F, %5C) and backslashes are not accepted")]
    EncodedSeparator,
    #[error("malformed percent-encoding in the request path")]
    BadEscape,
    #[error("control characters are not accepted in the request path")]
    Control,
    #[error("the request path climbs above the root")]
    AboveRoot,
    #[error("dot-segments with parameters (such as ..;) are not accepted")]
    DotSegmentParams,
}

pub fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `raw` is already canonical, checked without allocating; the
/// common case on the hot path.
fn is_canonical(raw: &str) -> bool {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // "/." followed by end, "/" or "." is a dot-segment, and
                // "/.;" one with parameters.
                match b.get(i + 1) {
                    None | Some(b'/') | Some(b'.') | Some(b';') => return false,
                    _ => {}
                }
            }
            c if c < 0x20 || c == 0x7f => return false,
            _ => {}
        }
        prev = c;
    }
    true
}

/// Canonicalises a raw request path (no query).
pub fn canonicalize(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    if is_canonical(raw) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }

    // Decode unreserved escapes; refuse separators and junk. Built as bytes
    // so that non-ASCII input is copied, not re-encoded byte by byte.
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::Control),
                    v if is_unreserved(v) => decoded.push(v),
                    v => {
                        decoded.push(b'%');
                        decoded.push(b"0123456789ABCDEF"[usize::from(v >> 4)]);
                        decoded.push(b"0123456789ABCDEF"[usize::from(v & 15)]);
                    }
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::EncodedSeparator),
            c if c < 0x20 || c == 0x7f => return Err(PathError::Control),
            _ => decoded.push(c),
        }
        i += 1;
    }
    // Only ASCII was added and other bytes copied whole from a `str`.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadEscape)?;

    // Resolve segments.
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s if matches!(s.split_once(';'), Some(("." | "..", _))) => {
                return Err(PathError::DotSegmentParams)
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    Ok(std::borrow::Cow::Owned(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        canonicalize(raw).unwrap().into_owned()
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(ok("/a/b"), "/a/b");
        assert_eq!(ok("/public/../admin/secret"), "/admin/secret");
        assert_eq!(ok("/public/%2e%2e/admin/secret"), "/admin/secret");
        assert_eq!(ok("/public/%2E%2E/admin/secret"), "/admin/secret");
        assert_eq!(ok("/info/../private/data"), "/private/data");
        assert_eq!(ok("//a///b/"), "/a/b/");
        assert_eq!(ok("/a/./b/."), "/a/b/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/%41%7e"), "/A~");
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%3fb"), "/a%3Fb");
        assert_eq!(ok("/x%252F"), "/x%252F");
        assert_eq!(ok("/api/secret;/api/health"), "/api/secret;/api/health");
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/a;b/.x;y/..."), "/a;b/.x;y/...");
        assert_eq!(ok("//caf\u{e9}/%41"), "/caf\u{e9}/A");
    }

    #[test]
    fn refused_forms() {
        assert_eq!(
            canonicalize("/public/..%2Fadmin/secret"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            canonicalize("/admin%2fsecret"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            canonicalize("/public%5C..%5Cadmin"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(canonicalize("/a\\b"), Err(PathError::EncodedSeparator));
        assert_eq!(canonicalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(canonicalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(canonicalize("/a%00"), Err(PathError::Control));
        assert_eq!(canonicalize("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(canonicalize("*"), Err(PathError::NotAbsolute));
        for p in ["/public/..;/admin", "/a/.;x/b", "/a/%2e%2e;x/b", "/a/..;"] {
            assert_eq!(canonicalize(p), Err(PathError::DotSegmentParams), "{p}");
        }
    }
}
