//! Text from the cluster and from DNS answers, which tenants control, made inert: for inline
//! markdown that people read raw too (REPORT.md, `leash diff`: [`md`]), for a pull request's
//! markdown, which people read rendered ([`escape`]), and for one-line plain text (a title,
//! a commit message: [`plain`]). One module, so that every output breaks the same markup.

/// U+200B ZERO WIDTH SPACE: put after a character that would start a reference the forge
/// links after rendering (a mention, an issue reference, a URL scheme), where a backslash no
/// longer helps.
pub const BREAK: char = '\u{200B}';

/// Characters that start a reference GitHub or GitLab link in the rendered text: `@user`,
/// `#12`, GitLab's `!12`, `~label`, `%milestone`, `$snippet`, `&epic`, and the `scheme:/` of
/// a URL.
const SIGILS: [char; 8] = ['@', '#', '!', '~', '%', '$', '&', ':'];

/// Whether `c` changes how text around it reads or breaks a line without being a control
/// character: line and paragraph separators, zero-width characters that hide text or join
/// it, and the bidirectional overrides that reorder what a reviewer sees.
fn is_invisible_control(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    )
}

/// Whether `c` is replaced by U+FFFD in every output: control characters (line breaks among
/// them), separators and bidirectional controls.
pub fn is_replaced(c: char) -> bool {
    c.is_control() || is_invisible_control(c)
}

/// Markdown escaping of a value from the cluster or DNS, for inline text, table cells
/// included:
/// - every ASCII punctuation character is backslash-escaped (CommonMark lets any of them be,
///   and the backslash then shows nothing): no emphasis, link, image, code span, HTML tag,
///   entity, heading, list, quote, table cell (`|`), footnote or math can start;
/// - a zero-width space follows every reference sigil (`@`, `#`, `!`, `~`, `%`, `$`, `&`,
///   and `:` before `/`): forges link mentions, issue references and URLs in the rendered
///   text, where the backslash is gone; a `www.` gets one before its dot;
/// - control characters, line and paragraph separators and bidirectional controls become
///   U+FFFD: no line break, no reordered text.
///
/// What remains reads as the original, with invisible breaks; nothing in it is markup.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    // The last three characters read, lower-cased, to find `www.`.
    let mut last3 = ['\0'; 3];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_replaced(c) {
            out.push(char::REPLACEMENT_CHARACTER);
        } else if c.is_ascii_punctuation() {
            if c == '.' && last3 == ['w', 'w', 'w'] {
                out.push(BREAK);
            }
            out.push('\\');
            out.push(c);
            // A colon starts a link only as `scheme:/`: IPv6 addresses and times keep theirs.
            if SIGILS.contains(&c) && (c != ':' || chars.peek() == Some(&'/')) {
                out.push(BREAK);
            }
        } else {
            out.push(c);
        }
        last3 = [last3[1], last3[2], c.to_ascii_lowercase()];
    }
    out
}

/// A value for a one-line plain text (a pull request's title, a commit message): control
/// characters, separators and bidirectional controls become U+FFFD, and a zero-width space
/// follows `@` and `#` (forges link mentions and references in titles and commit messages).
/// At most `max` characters: a longer text keeps `max - 1` and ends with `…`.
pub fn plain(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_replaced(c) {
            out.push(char::REPLACEMENT_CHARACTER);
        } else {
            out.push(c);
            if c == '@' || c == '#' {
                out.push(BREAK);
            }
        }
    }
    truncate(&out, max)
}

/// `s` within `max` characters: a longer one keeps `max - 1` and ends with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    if max > 0 {
        out.push('…');
    }
    out
}

/// Inline markdown for text read raw as well as rendered (REPORT.md, `leash diff`): the
/// characters that start emphasis, links, code, HTML or entities are backslash-escaped, a
/// zero-width space follows reference sigils (as in [`escape`]: mentions, issue references,
/// URL schemes and `www.` autolinks), and controls become U+FFFD. Dots, dashes, slashes and
/// colons of names and addresses stay as they are. Pipes are left to `render::cell`, for
/// tables.
pub fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last3 = ['\0'; 3];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_replaced(c) {
            out.push(char::REPLACEMENT_CHARACTER);
        } else {
            if c == '.' && last3 == ['w', 'w', 'w'] {
                out.push(BREAK);
            }
            if matches!(
                c,
                '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '<' | '>' | '&'
            ) {
                out.push('\\');
            }
            out.push(c);
            if SIGILS.contains(&c) && (c != ':' || chars.peek() == Some(&'/')) {
                out.push(BREAK);
            }
        }
        last3 = [last3[1], last3[2], c.to_ascii_lowercase()];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_becomes_text() {
        assert_eq!(escape("a_b.c"), "a\\_b\\.c");
        assert_eq!(escape("[x](y)"), "\\[x\\]\\(y\\)");
        assert_eq!(escape("@team"), "\\@\u{200B}team");
        assert_eq!(escape("http://e.com"), "http\\:\u{200B}\\/\\/e\\.com");
        assert_eq!(escape("WWW.e"), "WWW\u{200B}\\.e");
        assert_eq!(escape("2001:db8::1"), "2001\\:db8\\:\\:1");
        assert_eq!(escape("a\nb\u{202E}c"), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(escape("ünï"), "ünï");
    }

    #[test]
    fn plain_is_one_bounded_line() {
        assert_eq!(plain("a\nb @x #1", 100), "a\u{FFFD}b @\u{200B}x #\u{200B}1");
        assert_eq!(plain("abcdef", 4), "abc…");
        assert_eq!(plain("abcd", 4), "abcd");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn md_keeps_names_readable_and_inert() {
        assert_eq!(md("api.stripe.test"), "api.stripe.test");
        assert_eq!(md("2001:db8::1"), "2001:db8::1");
        assert_eq!(md("x_y [a](b)"), "x\\_y \\[a\\](b)");
        assert_eq!(
            md("@team #1 http://e"),
            "@\u{200B}team #\u{200B}1 http:\u{200B}//e"
        );
        assert_eq!(md("www.e"), "www\u{200B}.e");
        assert_eq!(md("a\nb\u{202E}"), "a\u{FFFD}b\u{FFFD}");
    }
}
