//! Image references parsed by hand, to the grammar of oci-spec's
//! `Reference::from_str`, which matches one large regex compiled on first
//! use: its Unicode `\w{0,127}` tag class alone builds an automaton of more
//! than 13 MiB that then stays in a static for the life of the process. For
//! an agent that idles at a few MiB of heap, that was most of the memory a
//! first pull added. The result is the same `Reference` (same normalisation:
//! `docker.io`, `library/`), built with its plain constructors.

use oci_client::{ParseError, Reference};

const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Parses `registry/repo[:tag][@digest]` as oci-spec does.
pub(crate) fn parse(s: &str) -> Result<Reference, ParseError> {
    if s.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    let (left, digest) = match s.split_once('@') {
        Some((left, digest)) => (left, Some(digest)),
        None => (s, None),
    };
    // A tag is after a ':' in the last path component (a ':' before the
    // last '/' is a registry port).
    let last_slash = left.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match left[last_slash..].find(':') {
        Some(i) => (&left[..last_slash + i], Some(&left[last_slash + i + 1..])),
        None => (left, None),
    };
    let invalid = ParseError::ReferenceInvalidFormat;
    if !valid_name(name) || !tag.is_none_or(valid_tag) || !digest.is_none_or(valid_digest) {
        return Err(invalid);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ParseError::NameTooLong);
    }
    if let Some(digest) = digest {
        let expected = match digest.split_once(':') {
            Some(("sha256", _)) => 64,
            Some(("sha384", _)) => 96,
            Some(("sha512", _)) => 128,
            Some(_) => return Err(ParseError::DigestUnsupported),
            None => return Err(ParseError::DigestInvalidFormat),
        };
        if digest
            .split_once(':')
            .is_some_and(|(_, hex)| hex.len() != expected)
        {
            return Err(ParseError::DigestInvalidLength);
        }
    }
    let (tag, digest) = (tag.map(str::to_owned), digest.map(str::to_owned));
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag, digest)
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or_else(|| "latest".into()))
        }
    })
}

/// `[domain/]component(/component)*`: the domain is optional, so a first
/// component may be either.
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.iter().all(|p| path_component(p))
        || (parts.len() > 1 && domain(parts[0]) && parts[1..].iter().all(|p| path_component(p)))
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn path_component(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between alphanumeric runs: one '.', one '_', "__", or any run of '-'.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `label(\.label)*(:[0-9]+)?` with labels of letters, digits and inner '-'.
fn domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}` (`\w` as the regex crate's Unicode word class
/// approximates it: alphanumeric or '_').
fn valid_tag(tag: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    chars.next().is_some_and(word)
        && tag.chars().count() <= TAG_MAX
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[[:xdigit:]]{32,}`
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let part = |p: &str| {
        let b = p.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(part)
        && hex.len() >= 32
        && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

/// As distribution's `splitDomain`: a first component is a registry if it
/// has a '.' or a ':' or is `localhost`; Docker Hub gets `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_owned();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn agrees_with_oci_spec_on_valid_and_invalid_references() {
        let digested = |s: &str| format!("{s}@{SHA}");
        let mut cases: Vec<String> = [
            "busybox",
            "library/busybox:1.36",
            "index.docker.io/busybox",
            "docker.io/org/app:v1",
            "localhost/app",
            "localhost:5000/app:tag",
            "127.0.0.1:5000/ns/kmod:6.1.0-56-amd64",
            "registry.example.com/a/b/c/d:latest",
            "reg-1.ex-ample.io:443/a.b_c__d---e/f:T_a.g-9",
            "reg/kmod_a:x",
            "quay.io/org/img@sha384:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "quay.io/org/img@sha256:abc",
            "quay.io/org/img@md5:0123456789abcdef0123456789abcdef",
            "quay.io/org/img@sha256",
            "quay.io/org/img@sha256+x.y_z-w:0123456789abcdef0123456789abcdefzz",
            "",
            "UPPER/case",
            "Reg.IO/lower",
            "reg.io/Upper",
            "-reg.io/a",
            "reg-.io/a",
            "reg.io:/a",
            "reg.io:50a/a",
            "a..b/c",
            "a/b_-c",
            "a/b___c",
            "a/.b",
            "a/b.",
            "a//b",
            "a/b:",
            "a/b:-tag",
            "a/b:.tag",
            "a/b:t@g",
            "a/b:tag:more",
            "a:tag/b",
            "a/b@",
            "a/b@@sha256",
            "tag:ünïcode",
            "a/b c",
            "/a",
            "a/",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.push(format!("a/b:{}", "t".repeat(128)));
        cases.push(format!("a/b:{}", "t".repeat(129)));
        cases.push(format!("reg.io/{}", "a".repeat(256)));
        let plain = cases.clone();
        cases.extend(plain.iter().map(|s| digested(s)));
        for case in &cases {
            let ours = parse(case);
            let theirs = case.parse::<Reference>();
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(
                    (a.registry(), a.repository(), a.tag(), a.digest()),
                    (b.registry(), b.repository(), b.tag(), b.digest()),
                    "{case}"
                ),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{case}"),
                _ => panic!("{case:?}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
    }
}
