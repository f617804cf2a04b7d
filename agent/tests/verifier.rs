//! A real verifier rejection through the agent's loading path.
//!
//! The test writes two minimal eBPF objects in memory (one `cgroup_skb/ingress` program each),
//! parses them with aya and loads them with [`leash_agent::capture::load_cgroup_skb`], the
//! function `Capture::start` uses for its ingress program. The valid program (`r0 = 1; exit`)
//! must load, which proves the object is well-formed; the invalid one (`exit` without setting
//! `r0`) must come back as [`Error::VerifierRejected`] carrying the kernel's own log.
//!
//! Needs root (loading BPF programs). Without it the test skips with a reason, unless
//! `LEASH_REQUIRE_PRIVILEGED=1`.

use aya::Ebpf;
use leash_agent::capture::{Error, load_cgroup_skb};
use object::{
    Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
    write::{Object, Symbol, SymbolSection},
};

/// The program's section: aya derives the program type (`CgroupSkb`) from it.
const SECTION: &[u8] = b"cgroup_skb/ingress";

/// `r0 = 1` (`BPF_ALU64 | BPF_MOV | BPF_K`, dst r0, imm 1).
const MOV_R0_1: [u8; 8] = [0xb7, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00];
/// `exit` (`BPF_JMP | BPF_EXIT`).
const EXIT: [u8; 8] = [0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];

/// What the kernel verifier logs when a program exits without having written `r0`.
const EXPECTED_LOG_LINE: &str = "R0 !read_ok";

/// A little-endian eBPF relocatable object with one program `name` in [`SECTION`] made of
/// `instructions`, and a GPL license section.
fn bpf_object(name: &str, instructions: &[[u8; 8]]) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let text = obj.add_section(Vec::new(), SECTION.to_vec(), SectionKind::Text);
    let code = instructions.concat();
    let size = u64::try_from(code.len()).expect("program size fits u64");
    let offset = obj.append_section_data(text, &code, 8);
    obj.add_symbol(Symbol {
        name: name.as_bytes().to_vec(),
        value: offset,
        size,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let license = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.append_section_data(license, b"GPL\0", 1);
    obj.write().expect("writing the ELF object")
}

/// Parses `elf` with aya from an 8-byte aligned copy (the ELF reader needs aligned headers).
fn parse(elf: &[u8]) -> Ebpf {
    let mut buf = vec![0u8; elf.len() + 7];
    let start = buf.as_ptr().align_offset(8);
    let aligned = &mut buf[start..start + elf.len()];
    aligned.copy_from_slice(elf);
    Ebpf::load(aligned).expect("aya parses the written object")
}

#[test]
fn verifier_rejection_reports_the_kernel_log() {
    if !leash_lab::require_privileged() {
        return;
    }

    // Control: the same kind of object with a correct program loads.
    let mut good = parse(&bpf_object("leash_good", &[MOV_R0_1, EXIT]));
    if let Err(e) = load_cgroup_skb(&mut good, "leash_good") {
        panic!("the valid program must load, got: {e}");
    }

    let mut bad = parse(&bpf_object("leash_bad", &[EXIT]));
    let err = match load_cgroup_skb(&mut bad, "leash_bad") {
        Ok(()) => panic!("the kernel verifier accepted a program that never sets r0"),
        Err(e) => e,
    };
    let message = err.to_string();
    eprintln!("{message}");
    match &err {
        Error::VerifierRejected {
            program,
            source,
            log,
        } => {
            assert_eq!(program, "leash_bad", "{message}");
            assert_eq!(
                source.raw_os_error(),
                Some(libc::EACCES),
                "the verifier rejects with EACCES: {message}"
            );
            assert!(
                log.contains(EXPECTED_LOG_LINE),
                "verifier log lacks {EXPECTED_LOG_LINE:?}: {message}"
            );
        }
        other => panic!("expected Error::VerifierRejected, got {other:?}: {message}"),
    }
    assert!(
        message.contains("the kernel verifier rejected program leash_bad"),
        "{message}"
    );
    assert!(message.contains("verifier log:\n"), "{message}");
    assert!(message.contains(EXPECTED_LOG_LINE), "{message}");
}
