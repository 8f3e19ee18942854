//! Image reference checks shared by validation (Rust and CEL use the same pattern).

use std::sync::LazyLock;

use regex::Regex;

/// The pattern the CRD's CEL rule uses (`self.matches(...)`): a `:` after the last `/` with a
/// non-empty tag. Kept identical so the webhook and the schema agree.
pub const TAG_PATTERN: &str = ":[^/]+$";

static TAG: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(TAG_PATTERN).ok());

/// True when `image` carries a digest (`@sha256:...`) or a tag (`repo:tag`). Placeholders such
/// as `${KERNEL_FULL_VERSION}` count as text, so `repo:${KERNEL_FULL_VERSION}` has a tag while
/// `registry:5000/repo` does not.
pub fn has_tag_or_digest(image: &str) -> bool {
    image.contains('@') || TAG.as_ref().is_some_and(|re| re.is_match(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests_are_recognised() {
        let cases = [
            ("repo:1.0", true),
            ("registry:5000/org/repo:v1", true),
            ("registry:5000/org/repo", false),
            ("repo", false),
            ("repo:", false),
            ("repo@sha256:abcd", true),
            (
                "10.0.2.2:5000/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_FULL_VERSION}",
                true,
            ),
            ("some.registry/org/my-kmod:$KERNEL_FULL_VERSION", true),
            ("some.registry/org/${MOD_NAME}", false),
        ];
        for (image, want) in cases {
            assert_eq!(has_tag_or_digest(image), want, "{image}");
        }
    }
}
