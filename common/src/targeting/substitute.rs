//! Shell-like variable substitution in `containerImage` and `filesToSign`.
//!
//! Semantics are Go's `os.Expand`, which upstream KMM uses: `$NAME` and `${NAME}` are replaced;
//! **an unknown variable becomes the empty string** (so `repo:$TYPO` yields `repo:`, which the
//! image check then rejects); `$` followed by a character that cannot start a name (or at the
//! end of the string) is kept literally; `${}` and an unclosed `${` are dropped.

/// The variables a Module may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vars<'a> {
    /// `KERNEL_FULL_VERSION`: the node's kernel, e.g. `6.1.0-56-amd64`.
    pub kernel_full_version: &'a str,
    /// `MOD_NAME`: the Module's name.
    pub mod_name: &'a str,
    /// `MOD_NAMESPACE`: the Module's namespace.
    pub mod_namespace: &'a str,
}

impl Vars<'_> {
    /// Value of a variable; unknown names yield `""` (os.Expand with a map lookup).
    pub fn get(&self, name: &str) -> &str {
        match name {
            "KERNEL_FULL_VERSION" => self.kernel_full_version,
            "MOD_NAME" => self.mod_name,
            "MOD_NAMESPACE" => self.mod_namespace,
            _ => "",
        }
    }
}

/// Expands `$VAR` / `${VAR}` in `input` with os.Expand semantics (see the module docs).
pub fn substitute(input: &str, vars: &Vars<'_>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut copied = 0; // start of the not yet copied literal text
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            out.push_str(&input[copied..j]);
            let (name, width) = shell_name(&input[j + 1..]);
            match name {
                Some(name) => out.push_str(vars.get(name)),
                // Valid syntax but no name: keep the dollar.
                None if width == 0 => out.push('$'),
                // Invalid syntax (`${}` or unclosed `${`): eat it.
                None => {}
            }
            j += width;
            copied = j + 1;
        }
        j += 1;
    }
    out.push_str(&input[copied.min(input.len())..]);
    out
}

fn is_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_alnum(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Go's `getShellName`: the name after a `$` and how many bytes it used.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (Some(&s[1..2]), 3);
        }
        return match s[1..].find('}') {
            Some(0) => (None, 2),
            Some(i) => (Some(&s[1..=i]), i + 2),
            None => (None, 1),
        };
    }
    if is_special(b[0]) {
        return (Some(&s[0..1]), 1);
    }
    let len = b.iter().take_while(|c| is_alnum(**c)).count();
    if len == 0 {
        (None, 0)
    } else {
        (Some(&s[..len]), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: Vars<'static> = Vars {
        kernel_full_version: "6.1.0-56-amd64",
        mod_name: "brd",
        mod_namespace: "kmm-demo",
    };

    #[test]
    fn expands_like_go_os_expand() {
        let cases = [
            ("repo:${KERNEL_FULL_VERSION}", "repo:6.1.0-56-amd64"),
            ("repo:$KERNEL_FULL_VERSION", "repo:6.1.0-56-amd64"),
            (
                "10.0.2.2:5000/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_FULL_VERSION}",
                "10.0.2.2:5000/kmm-demo/brd:6.1.0-56-amd64",
            ),
            ("$MOD_NAMESPACE/$MOD_NAME", "kmm-demo/brd"),
            (
                "/opt/lib/modules/$KERNEL_FULL_VERSION/x.ko",
                "/opt/lib/modules/6.1.0-56-amd64/x.ko",
            ),
            ("no variables", "no variables"),
            ("", ""),
            // Unknown variables expand to the empty string (os.Expand with a map).
            ("repo:${UNKNOWN}", "repo:"),
            ("repo:$UNKNOWN-x", "repo:-x"),
            // A dollar that starts no name is kept; a trailing dollar too.
            ("a$/b", "a$/b"),
            ("cost$", "cost$"),
            ("$.x", "$.x"),
            // Bad syntax is eaten, as in Go.
            ("a${}b", "ab"),
            ("a${MOD_NAME", "aMOD_NAME"),
            // Special one-character names are names (and unknown here).
            ("a$1b", "ab"),
            ("a${1}b", "ab"),
            // Names end at the first non-alphanumeric.
            ("$MOD_NAME.ko", "brd.ko"),
            ("${MOD_NAME}x", "brdx"),
            ("$MOD_NAMEx", ""),
        ];
        for (input, want) in cases {
            assert_eq!(substitute(input, &VARS), want, "input {input:?}");
        }
    }
}
