//! Login emails in one canonical form, so that addresses a person would read as the same one are one
//! account: [`Email::parse`] (registration) refuses invisible and control characters and keeps the
//! address as typed for display plus its normalised form, the unique key; [`normalize`] is the same
//! form without the refusals, for looking an owner up at login.
//!
//! The normalised form is: trimmed (Unicode white space), Unicode NFC, then lowercased with Rust's
//! `to_lowercase` (the Unicode lowercase mapping, every script), then NFC again (lowercasing can
//! decompose). Lowercasing stands in for full case folding: the two differ only for a few letters
//! (`ß` stays `ß`, where folding makes `ss`), which keeps those addresses distinct, never merges
//! two that should differ.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::AccountError;

/// Longest address accepted, in characters (RFC 5321's path limit).
const EMAIL_MAX_CHARS: usize = 254;

/// A registrable email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// As typed, trimmed and in NFC: what the owner sees.
    pub display: String,
    /// [`normalize`]d: what is unique and what login compares.
    pub normalized: String,
}

impl Email {
    /// A plausible address (`local@domain`, no white space) without control (Cc) or format (Cf)
    /// characters such as U+200B ZERO WIDTH SPACE, U+202E RIGHT-TO-LEFT OVERRIDE or U+FEFF: they
    /// are invisible, so two addresses that look the same could be two accounts.
    pub fn parse(raw: &str) -> Result<Email, AccountError> {
        let trimmed = raw.trim();
        if let Some(c) = trimmed.chars().find(|c| invisible(*c)) {
            return Err(AccountError::InvalidEmail(format!(
                "email must not contain control or invisible formatting characters (found U+{:04X})",
                u32::from(c)
            )));
        }
        let display: String = trimmed.nfc().collect();
        let plausible = display.chars().count() <= EMAIL_MAX_CHARS
            && !display.chars().any(char::is_whitespace)
            && display.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
        if !plausible {
            return Err(AccountError::InvalidEmail(format!(
                "email must look like name@domain, at most {EMAIL_MAX_CHARS} characters, without spaces"
            )));
        }
        Ok(Email { normalized: normalize(&display), display })
    }
}

/// The normalised form of `raw` (see the module docs); it refuses nothing.
pub fn normalize(raw: &str) -> String {
    let nfc: String = raw.trim().nfc().collect();
    nfc.to_lowercase().nfc().collect()
}

/// General categories Cc (controls, NUL included) and Cf (format: zero-width and direction marks).
fn invisible(c: char) -> bool {
    matches!(c.general_category(), GeneralCategory::Control | GeneralCategory::Format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_composition_and_surrounding_space_give_one_normalised_form() {
        let plain = Email::parse("jose\u{301}@example.com").unwrap();
        assert_eq!(plain.display, "jos\u{e9}@example.com");
        for variant in [" JOS\u{c9}@Example.COM ", "JOSE\u{301}@example.com", "jos\u{e9}@example.com"] {
            assert_eq!(Email::parse(variant).unwrap().normalized, plain.normalized, "{variant:?}");
        }
        assert_eq!(normalize(" \u{c4}DA@X.org"), "\u{e4}da@x.org");
    }

    #[test]
    fn invisible_and_control_characters_are_refused_naming_the_code_point() {
        for (raw, code) in [
            ("boot\u{200b}strap@strata.invalid", "U+200B"),
            ("a\u{202e}b@example.com", "U+202E"),
            ("\u{feff}a@example.com", "U+FEFF"),
            ("a\u{7}@example.com", "U+0007"),
            ("a\0@example.com", "U+0000"),
        ] {
            match Email::parse(raw) {
                Err(AccountError::InvalidEmail(m)) => assert!(m.contains(code), "{raw:?}: {m}"),
                other => panic!("{raw:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn implausible_shapes_are_refused() {
        for raw in ["", "no-at-sign", "@example.com", "a@", "a@b@c", "a b@example.com"] {
            assert!(matches!(Email::parse(raw), Err(AccountError::InvalidEmail(_))), "{raw:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
