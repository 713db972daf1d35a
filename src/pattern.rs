//! Glob matching of keys for the `pattern` operation: `*`, `?`, `[...]`
//! classes (with `!` or `^` negation and `a-z` ranges) and `\` escapes,
//! over bytes.
//!
//! Matching is iterative with one backtrack point (the last `*`), so it runs
//! in O(pattern × key) time at worst and never recurses: a hostile pattern
//! cannot blow the stack or take exponential time.

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// Whether a pattern is acceptable: 1 to 1024 bytes.
pub fn is_valid_pattern(pattern: &[u8]) -> bool {
    !pattern.is_empty() && pattern.len() <= MAX_PATTERN_BYTES
}

/// Whether `key` matches the glob `pattern`.
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    backtrack = Some((p, k));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    k += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p, key[k]) {
                        if matched {
                            p = next;
                            k += 1;
                            continue;
                        }
                    } else if key[k] == b'[' {
                        // An unterminated class is a literal '['.
                        p += 1;
                        k += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == key[k] {
                        p += 2;
                        k += 1;
                        continue;
                    }
                }
                c => {
                    if c == key[k] {
                        p += 1;
                        k += 1;
                        continue;
                    }
                }
            }
        }
        match backtrack {
            Some((bp, bk)) => {
                p = bp + 1;
                k = bk + 1;
                backtrack = Some((bp, bk + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `byte` against the class starting at `pattern[start] == b'['`.
/// Returns whether it matched and the index after the class, or `None` when
/// the class is not terminated.
fn match_class(pattern: &[u8], start: usize, byte: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let c = *pattern.get(i)?;
        if c == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let (lo, after_lo) = if c == b'\\' {
            (*pattern.get(i + 1)?, i + 2)
        } else {
            (c, i + 1)
        };
        if pattern.get(after_lo) == Some(&b'-') && pattern.get(after_lo + 1).is_some_and(|&h| h != b']') {
            let hi = pattern[after_lo + 1];
            if lo <= byte && byte <= hi {
                matched = true;
            }
            i = after_lo + 2;
        } else {
            if lo == byte {
                matched = true;
            }
            i = after_lo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"character:*", b"character:1234"));
        assert!(!glob_match(b"character:*", b"campaign:1"));
        assert!(glob_match(b"char?", b"char1"));
        assert!(!glob_match(b"char?", b"char12"));
        assert!(glob_match(b"c[a-c]t", b"cbt"));
        assert!(!glob_match(b"c[!a-c]t", b"cbt"));
        assert!(glob_match(b"c[!a-c]t", b"cdt"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"*:*:*", b"a:b:c"));
        assert!(glob_match(b"a[", b"a["));
        assert!(glob_match(b"[]]", b"]"));
        assert!(!glob_match(b"", b"x"));
        assert!(glob_match(b"", b""));
    }

    #[test]
    fn hostile_pattern_is_fast() {
        let pattern = b"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let key = [b'a'; 250];
        assert!(!glob_match(pattern, &key));
    }
}
