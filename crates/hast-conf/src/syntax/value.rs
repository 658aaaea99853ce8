//! Value and name rules both files share: the `BadValue` message, absolute
//! paths, whole numbers, resource and node names, and FreeBSD's matching of
//! `on` sections to the node name.

use std::path::PathBuf;

use super::error::SyntaxError;

/// `invalid KEY "VALUE": REASON`
pub fn bad<K: From<SyntaxError>>(key: &str, value: &str, reason: impl Into<String>) -> K {
    K::from(SyntaxError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    })
}

/// Paths are absolute because the daemon does not run in the directory
/// the operator wrote the file from.
pub fn abs_path(key: &str, value: &str) -> Result<PathBuf, SyntaxError> {
    if !value.starts_with('/') {
        return Err(bad(key, value, "must be an absolute path"));
    }
    Ok(PathBuf::from(value))
}

/// One or more ASCII digits and nothing else (`u64::from_str` alone would
/// also take a leading '+').
pub fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Why a word is not a whole number of at least the minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberError {
    /// Not digits, or below the minimum.
    Invalid,
    /// Digits, but above `u32::MAX`.
    TooLarge,
}

/// A whole number of at least `min`, in digits only.
pub fn whole_number(value: &str, min: u32) -> Result<u32, NumberError> {
    if !is_digits(value) {
        return Err(NumberError::Invalid);
    }
    match value.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(NumberError::Invalid),
        Err(_) => Err(NumberError::TooLarge),
    }
}

pub const NAME_LEN_MAX: usize = 64;
pub const NODE_NAME_LEN_MAX: usize = 255;

/// Resource (and export) names become file and socket names and arguments
/// of scripts, so they are kept to a safe alphabet: never a '/', never a
/// leading '.' (no `..`, no hidden files), never a leading '-' (would look
/// like a flag to tools). `all` means every resource to the control tool;
/// `reserved` is the reason given for it.
pub fn check_resource_name(name: &str, reserved: &'static str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return Err("must be 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("use only A-Z a-z 0-9 . _ -");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("must not start with '.' or '-'");
    }
    if name == "all" {
        return Err(reserved);
    }
    Ok(())
}

/// Node names are host names, short host names or FreeBSD host UUIDs.
pub fn check_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NODE_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The short host name: up to the first '.'.
pub fn first_label(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// FreeBSD's rule for `on` sections: the full name, or the short host name
/// on either side. Host names are compared without regard to ASCII case
/// (RFC 4343).
pub fn node_matches(section: &str, node: &str) -> bool {
    section.eq_ignore_ascii_case(node)
        || section.eq_ignore_ascii_case(first_label(node))
        || first_label(section).eq_ignore_ascii_case(node)
}

/// The one section among `items` that matches `node`; two are an error on
/// the second one's line.
pub fn pick<'s, T, K: From<SyntaxError>>(
    items: &'s [T],
    name_line: impl Fn(&T) -> (&str, u32),
    node: &str,
) -> Result<Option<&'s T>, (u32, K)> {
    let mut found: Option<&T> = None;
    for item in items {
        let (name, line) = name_line(item);
        if !node_matches(name, node) {
            continue;
        }
        if let Some(first) = found {
            let (first_name, first_line) = name_line(first);
            return Err((
                line,
                K::from(SyntaxError::AmbiguousNode {
                    first: first_name.to_owned(),
                    first_line,
                    second: name.to_owned(),
                }),
            ));
        }
        found = Some(item);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("nodeA", "nodeA", true),
            ("nodeA", "nodeA.example.com", true),
            ("nodeA.example.com", "nodeA", true),
            ("nodeA.example.com", "nodeA.example.com", true),
            ("nodea", "NODEA.example.com", true),
            ("NodeA", "nodea", true),
            ("nodeA.example.com", "nodeA.other.com", false),
            ("nodeB", "nodeA", false),
            ("node", "nodeA", false),
            ("nodeA", "node", false),
            ("nodeAB", "nodeA.example.com", false),
        ];
        for (section, node, want) in cases {
            assert_eq!(node_matches(section, node), *want, "on {section} / {node}");
        }
    }

    #[test]
    fn picking() {
        let items = [("a", 1), ("b.example.com", 2), ("B", 3)];
        fn name_line<'a>(item: &'a (&str, u32)) -> (&'a str, u32) {
            *item
        }
        let one: Result<_, (u32, SyntaxError)> = pick(&items, name_line, "a.example.com");
        assert_eq!(one.ok().flatten(), Some(&("a", 1)));
        let none: Result<_, (u32, SyntaxError)> = pick(&items, name_line, "c");
        assert_eq!(none.ok().flatten(), None);
        let two: Result<_, (u32, SyntaxError)> = pick(&items, name_line, "b");
        let (line, kind) = two.unwrap_err();
        assert_eq!(line, 3);
        assert_eq!(
            kind.to_string(),
            "sections \"on b.example.com\" (line 2) and \"on B\" both match this node"
        );
    }

    #[test]
    fn resource_names() {
        let ok = ["shared", "a", "tank.0", "r_1-b", "A9", &"x".repeat(64)];
        for n in ok {
            assert_eq!(check_resource_name(n, "reserved"), Ok(()), "{n}");
        }
        let bad = [
            ("", "must be 1 to 64 characters"),
            ("../x", "use only A-Z a-z 0-9 . _ -"),
            ("a/b", "use only A-Z a-z 0-9 . _ -"),
            (".hidden", "must not start with '.' or '-'"),
            ("..", "must not start with '.' or '-'"),
            ("-x", "must not start with '.' or '-'"),
            ("a b", "use only A-Z a-z 0-9 . _ -"),
            ("é", "use only A-Z a-z 0-9 . _ -"),
            ("all", "reserved"),
            (&"x".repeat(65), "must be 1 to 64 characters"),
        ];
        for (n, why) in bad {
            assert_eq!(check_resource_name(n, "reserved"), Err(why), "{n}");
        }
    }

    #[test]
    fn node_names() {
        let ok = ["a", "node-a.example.com", "A_9", &"x".repeat(255)];
        for n in ok {
            assert!(check_node_name(n), "{n}");
        }
        for n in ["", "a/b", "a b", "é", &"x".repeat(256)] {
            assert!(!check_node_name(n), "{n}");
        }
    }

    #[test]
    fn whole_numbers() {
        let cases: &[(&str, u32, Result<u32, NumberError>)] = &[
            ("0", 0, Ok(0)),
            ("007", 1, Ok(7)),
            ("4294967295", 0, Ok(u32::MAX)),
            ("0", 1, Err(NumberError::Invalid)),
            ("", 0, Err(NumberError::Invalid)),
            ("+1", 0, Err(NumberError::Invalid)),
            ("-1", 0, Err(NumberError::Invalid)),
            ("1k", 0, Err(NumberError::Invalid)),
            ("4294967296", 0, Err(NumberError::TooLarge)),
        ];
        for (text, min, want) in cases {
            assert_eq!(whole_number(text, *min), *want, "{text:?} {min}");
        }
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(abs_path("pidfile", "/run/x").ok(), Some("/run/x".into()));
        let e = abs_path("pidfile", "run/x").unwrap_err().to_string();
        assert_eq!(e, "invalid pidfile \"run/x\": must be an absolute path");
    }
}
