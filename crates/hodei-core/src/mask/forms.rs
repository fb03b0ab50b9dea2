//! The forms in which a secret value can show up in a job's output: the raw
//! bytes, base64 (standard and URL-safe, whole or as part of longer base64
//! text at each of the three byte alignments) and percent-encoding.

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `data` with `alphabet`, `=`-padded when `pad`.
pub fn base64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = group.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
            } else if pad {
                out.push(b'=');
            }
        }
    }
    out
}

/// Standard base64 with padding (what `base64` and most libraries print).
pub fn base64_std(data: &[u8]) -> Vec<u8> {
    base64(data, STD, true)
}

/// The base64 characters that depend only on `value` when it sits at byte
/// offset `align` (0, 1 or 2, modulo 3) inside longer data: the characters
/// that mix in bits of the bytes around it are cut off at both ends, as
/// GitHub Actions does. Whatever surrounds the value, these characters
/// appear in the encoding of the whole.
pub fn base64_interior(value: &[u8], align: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let mut data = vec![0u8; align];
    data.extend_from_slice(value);
    let encoded = base64(&data, alphabet, false);
    // Character i covers bits [6i, 6i + 6); the value covers bits
    // [8 * align, 8 * (align + len)).
    let first = (8 * align).div_ceil(6);
    let end = (8 * (align + value.len())) / 6;
    if first >= end {
        return Vec::new();
    }
    encoded[first..end].to_vec()
}

/// Which bytes a percent-encoder leaves as they are.
#[derive(Clone, Copy)]
enum Keep {
    /// RFC 3986 unreserved: letters, digits, `-._~` (Python's
    /// `quote(safe='')`, Go's `url.PathEscape` for most values, curl).
    Unreserved,
    /// JavaScript's `encodeURIComponent`: unreserved plus `!'()*`.
    Component,
}

fn kept(b: u8, keep: Keep) -> bool {
    b.is_ascii_alphanumeric()
        || b"-._~".contains(&b)
        || (matches!(keep, Keep::Component) && b"!'()*".contains(&b))
}

/// Percent-encoding of `data`; `plus` writes a space as `+` (HTML forms,
/// Python's `quote_plus`, Go's `url.QueryEscape`).
fn percent(data: &[u8], keep: Keep, upper: bool, plus: bool) -> Vec<u8> {
    let hex: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(data.len() * 3);
    for &b in data {
        if kept(b, keep) {
            out.push(b);
        } else if plus && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    out
}

/// Percent-encoding as RFC 3986 prescribes (upper-case hex, only the
/// unreserved characters left as they are).
pub fn percent_encoded(data: &[u8]) -> Vec<u8> {
    percent(data, Keep::Unreserved, true, false)
}

/// Every form of `value` the masker looks for, longest first, without
/// duplicates and without forms shorter than `min_len`.
pub fn forms(value: &[u8], min_len: usize) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    for alphabet in [STD, URL] {
        forms.push(base64(value, alphabet, true));
        forms.push(base64(value, alphabet, false));
        for align in 0..3 {
            forms.push(base64_interior(value, align, alphabet));
        }
    }
    for keep in [Keep::Unreserved, Keep::Component] {
        for upper in [true, false] {
            for plus in [false, true] {
                forms.push(percent(value, keep, upper, plus));
            }
        }
    }
    forms.retain(|f| f.len() >= min_len);
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_reference_vectors() {
        // RFC 4648, section 10.
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_std(plain.as_bytes()), encoded.as_bytes(), "{plain}");
        }
        assert_eq!(base64(&[0xfb, 0xff], URL, false), b"-_8");
    }

    #[test]
    fn every_interior_appears_in_the_encoding_of_any_surrounding() {
        let value = b"hunter2-secret";
        for align in 0..3 {
            let interior = base64_interior(value, align, STD);
            assert!(interior.len() >= value.len(), "align {align}: {interior:?}");
            for prefix_len in (align..12).step_by(3) {
                for suffix in [&b""[..], b"x", b"xy", b"xyz!"] {
                    for fill in [0u8, 0xff, b'a'] {
                        let mut data = vec![fill; prefix_len];
                        data.extend_from_slice(value);
                        data.extend_from_slice(suffix);
                        let whole = base64_std(&data);
                        assert!(
                            whole.windows(interior.len()).any(|w| w == interior),
                            "align {align}, prefix {prefix_len}, suffix {suffix:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn percent_encoding_follows_rfc_3986() {
        assert_eq!(percent_encoded(b"p@ss w/rd~-._"), b"p%40ss%20w%2Frd~-._");
        assert_eq!(
            percent(b"a b!*", Keep::Component, false, true),
            b"a+b!*".to_vec()
        );
        assert_eq!(percent(b"\xff", Keep::Unreserved, false, false), b"%ff");
    }

    #[test]
    fn forms_are_unique_long_enough_and_longest_first() {
        let forms = forms(b"abcd", 4);
        // Raw, base64 (padded, unpadded, interiors); percent-encoding of a
        // value without reserved characters is the raw value again.
        assert!(forms.contains(&b"abcd".to_vec()));
        assert!(forms.contains(&b"YWJjZA==".to_vec()));
        assert!(
            forms
                .windows(2)
                .all(|w| w[0].len() >= w[1].len() && w[0] != w[1])
        );
        assert!(forms.iter().all(|f| f.len() >= 4));
    }
}
