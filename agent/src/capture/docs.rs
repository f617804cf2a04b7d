//! The READMEs name the kernel programs the agent really loads: every program section they
//! name is in the embedded object, every program of the object is one [`Capture::start`]
//! attaches, and README.md names each of them.
//!
//! [`Capture::start`]: super::Capture::start

use std::collections::BTreeSet;
use std::path::Path;

use leash_records::error::Chain;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

use super::{EBPF_OBJECT, INGRESS_PROGRAM, RELEASE_PROGRAM, SOCK_ADDR_PROGRAMS};

/// Section prefixes (before `/`) that name an eBPF program type, as aya and libbpf spell them.
const SECTION_TYPES: [&str; 30] = [
    "cgroup",
    "cgroup_skb",
    "cgroup_sock",
    "cgroup_sock_addr",
    "cgroup_sockopt",
    "cgroup_sysctl",
    "cgroup_device",
    "sock_ops",
    "sockops",
    "kprobe",
    "kretprobe",
    "uprobe",
    "uretprobe",
    "tracepoint",
    "tp",
    "tp_btf",
    "raw_tp",
    "raw_tracepoint",
    "fentry",
    "fexit",
    "lsm",
    "xdp",
    "tc",
    "classifier",
    "socket",
    "sk_msg",
    "sk_skb",
    "sk_lookup",
    "perf_event",
    "flow_dissector",
];

/// Program types a README may name alone, without an attach point (`sock_ops`).
const BARE_TYPES: [&str; 13] = [
    "sock_ops",
    "sockops",
    "kprobe",
    "kretprobe",
    "tracepoint",
    "raw_tracepoint",
    "fentry",
    "fexit",
    "lsm",
    "xdp",
    "sk_msg",
    "sk_skb",
    "sk_lookup",
];

/// The object's programs: (section name, function name), sorted.
fn object_programs() -> BTreeSet<(String, String)> {
    let file = object::File::parse(EBPF_OBJECT).expect("the embedded object parses");
    let mut programs = BTreeSet::new();
    for symbol in file.symbols() {
        let Some(index) = symbol.section_index() else {
            continue;
        };
        if symbol.kind() != object::SymbolKind::Text || symbol.name().is_err() {
            continue;
        }
        let section = file.section_by_index(index).expect("a symbol's section");
        let section_name = section.name().expect("a UTF-8 section name");
        // Code outside program sections (`.text`) holds subprograms, not programs.
        if section.kind() == SectionKind::Text && !section_name.starts_with('.') {
            let name = symbol.name().expect("checked above");
            programs.insert((section_name.to_owned(), name.to_owned()));
        }
    }
    programs
}

/// Whether a code span names an eBPF program section (`cgroup/connect4`, `cgroup/connect*`,
/// `sock_ops`).
fn names_a_program(span: &str) -> bool {
    match span.split_once('/') {
        Some((kind, attach)) => {
            SECTION_TYPES.contains(&kind)
                && !attach.is_empty()
                && attach
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
        }
        None => BARE_TYPES.contains(&span),
    }
}

/// Whether `span` (a section name, or a prefix ending in `*`) matches `section`.
fn matches(span: &str, section: &str) -> bool {
    match span.strip_suffix('*') {
        Some(prefix) => section.starts_with(prefix),
        None => span == section,
    }
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display(), e = Chain(&e)))
}

#[test]
fn the_agent_attaches_every_program_of_its_object() {
    let loaded: BTreeSet<&str> = SOCK_ADDR_PROGRAMS
        .into_iter()
        .chain([RELEASE_PROGRAM, INGRESS_PROGRAM])
        .collect();
    let in_object: BTreeSet<String> = object_programs().into_iter().map(|(_, f)| f).collect();
    assert_eq!(
        in_object
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        loaded,
        "programs of the object vs those Capture::start loads and attaches"
    );
}

#[test]
fn the_readmes_name_only_programs_the_agent_loads_and_readme_names_all() {
    let sections: BTreeSet<String> = object_programs().into_iter().map(|(s, _)| s).collect();
    assert!(
        sections.contains("cgroup_skb/ingress"),
        "object sections: {sections:?}"
    );
    for readme in ["../README.md", "../deploy/README.md"] {
        let named: BTreeSet<String> = leash_lab::markdown::code_spans(&read(readme))
            .into_iter()
            .filter(|s| names_a_program(s))
            .collect();
        for span in &named {
            assert!(
                sections.iter().any(|s| matches(span, s)),
                "{readme} names program `{span}`, which the agent does not load; it loads {sections:?}"
            );
        }
        if readme == "../README.md" {
            for section in &sections {
                assert!(
                    named.iter().any(|span| matches(span, section)),
                    "{readme} does not name program `{section}`; it names {named:?}"
                );
            }
        }
    }
}

#[test]
fn program_spans_are_recognised() {
    for yes in [
        "sock_ops",
        "cgroup/connect4",
        "cgroup/connect*",
        "cgroup_skb/ingress",
    ] {
        assert!(names_a_program(yes), "{yes}");
    }
    for no in [
        "cgroup",
        "/sys/fs/cgroup",
        "pod",
        "kubepods.slice/x",
        "cgroup/ x",
    ] {
        assert!(!names_a_program(no), "{no}");
    }
    assert!(matches("cgroup/connect*", "cgroup/connect6"));
    assert!(!matches("cgroup/connect4", "cgroup/connect6"));
}
