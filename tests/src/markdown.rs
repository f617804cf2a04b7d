//! Reading Markdown for tests that hold the documentation to the code.

/// The inline code spans of a Markdown text, outside fenced code blocks, with runs of
/// whitespace (a span wrapped over lines) folded to one space.
pub fn code_spans(markdown: &str) -> Vec<String> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|span| span.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_outside_fences_with_wrapped_ones_folded() {
        assert_eq!(
            code_spans("a `sock_ops` b\n```\n`xdp`\n```\n`cgroup/\nconnect4`"),
            ["sock_ops", "cgroup/ connect4"]
        );
    }
}
