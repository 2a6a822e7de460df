//! User-agent parsing: browser and OS families from the uap-core regexes (vendored in
//! `vendor/uap/regexes.json`, converted from uap-core's regexes.yaml, Apache-2.0) through the
//! official `ua-parser` crate, and a device class (`desktop`, `mobile`, `tablet`, `bot`, `other`).
//! Results are memoised per distinct user-agent string: SDK traffic repeats a few thousand strings.

use std::sync::{Arc, OnceLock};

use ua_parser::{os, user_agent, Regexes};

/// What an event stores about its user agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaInfo {
    /// The header (or event field) as sent, truncated to [`UA_MAX_CHARS`].
    pub user_agent: String,
    /// Browser family, e.g. `Chrome`, `Mobile Safari`; `None` when unrecognised.
    pub browser: Option<String>,
    /// OS family, e.g. `Windows`, `iOS`; `None` when unrecognised.
    pub os: Option<String>,
    /// `desktop`, `mobile`, `tablet`, `bot` or `other`.
    pub device: String,
}

/// Longest user agent stored; real ones stay far below it, longer ones are attacks.
pub const UA_MAX_CHARS: usize = 1024;
/// Distinct user agents memoised.
const MEMO_CAPACITY: u64 = 20_000;

static REGEXES: &str = include_str!("../../vendor/uap/regexes.json");

struct Extractors {
    ua: user_agent::Extractor<'static>,
    os: os::Extractor<'static>,
}

fn extractors() -> &'static Extractors {
    // Compiled once per process: several hundred regexes take a moment and the table never changes.
    static EXTRACTORS: OnceLock<Extractors> = OnceLock::new();
    EXTRACTORS.get_or_init(|| {
        let regexes: Regexes<'static> = serde_json::from_str(REGEXES).expect("vendored regexes.json is valid");
        let ua = user_agent::Builder::new()
            .push_all(regexes.user_agent_parsers)
            .expect("vendored user-agent regexes parse")
            .build()
            .expect("vendored user-agent regexes compile");
        let os = os::Builder::new()
            .push_all(regexes.os_parsers)
            .expect("vendored os regexes parse")
            .build()
            .expect("vendored os regexes compile");
        Extractors { ua, os }
    })
}

/// Memoising parser; cheap to clone.
#[derive(Clone)]
pub struct UaParser {
    memo: moka::sync::Cache<String, Arc<UaInfo>>,
}

impl Default for UaParser {
    fn default() -> Self {
        Self::new()
    }
}

impl UaParser {
    /// Compiles the regexes (once per process) and makes an empty memo.
    pub fn new() -> UaParser {
        extractors();
        UaParser { memo: moka::sync::Cache::new(MEMO_CAPACITY) }
    }

    /// Parses `raw` (memoised). Empty strings give `None`.
    pub fn parse(&self, raw: &str) -> Option<Arc<UaInfo>> {
        let raw = truncate_chars(raw.trim(), UA_MAX_CHARS);
        if raw.is_empty() {
            return None;
        }
        if let Some(hit) = self.memo.get(raw) {
            return Some(hit);
        }
        let info = Arc::new(parse_uncached(raw));
        self.memo.insert(raw.to_string(), info.clone());
        Some(info)
    }
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn parse_uncached(raw: &str) -> UaInfo {
    let ex = extractors();
    let browser = ex.ua.extract(raw).map(|v| v.family.into_owned()).filter(|f| f != "Other");
    let os = ex.os.extract(raw).map(|v| v.os.into_owned()).filter(|f| f != "Other");
    let device = device_class(raw, os.as_deref()).to_string();
    UaInfo { user_agent: raw.to_string(), browser, os, device }
}

/// Classifies the device from tokens every mainstream UA carries.
fn device_class(raw: &str, os: Option<&str>) -> &'static str {
    let ua = raw.to_ascii_lowercase();
    let has = |t: &str| ua.contains(t);
    if ["bot", "spider", "crawl", "slurp", "headless", "curl/", "wget/", "python-requests"].iter().any(|t| has(t)) {
        return "bot";
    }
    if has("ipad") || has("tablet") || has("kindle") || has("silk/") || (has("android") && !has("mobi")) {
        return "tablet";
    }
    if has("mobi") || has("iphone") || has("ipod") || has("android") || has("windows phone") || has("opera mini") {
        return "mobile";
    }
    let desktop_os = ["Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Chrome OS", "FreeBSD", "Debian"];
    if os.is_some_and(|o| desktop_os.contains(&o)) || has("windows nt") || has("macintosh") || has("x11") {
        return "desktop";
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_user_agents_are_classified() {
        let p = UaParser::new();
        let chrome = p
            .parse("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")
            .unwrap();
        assert_eq!(chrome.browser.as_deref(), Some("Chrome"));
        assert_eq!(chrome.os.as_deref(), Some("Windows"));
        assert_eq!(chrome.device, "desktop");
        let iphone = p
            .parse("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
            .unwrap();
        assert_eq!(iphone.browser.as_deref(), Some("Mobile Safari"));
        assert_eq!(iphone.os.as_deref(), Some("iOS"));
        assert_eq!(iphone.device, "mobile");
        let ipad = p
            .parse("Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.0 Mobile/15E148 Safari/604.1")
            .unwrap();
        assert_eq!(ipad.device, "tablet");
        let bot = p.parse("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").unwrap();
        assert_eq!(bot.device, "bot");
        assert_eq!(p.parse("   "), None);
    }

    #[test]
    fn overlong_user_agents_are_truncated_on_a_char_boundary() {
        let p = UaParser::new();
        let long = "é".repeat(UA_MAX_CHARS + 10);
        let info = p.parse(&long).unwrap();
        assert_eq!(info.user_agent.chars().count(), UA_MAX_CHARS);
        assert_eq!(info.device, "other");
    }
}
