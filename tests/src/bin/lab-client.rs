//! `lab-client`: the traffic generator run inside lab pods.
//!
//! ```text
//! lab-client tcp <ip> <port> [--count N] [--port-span M] [--send TEXT] [--timeout-ms MS]
//! lab-client udp-connected <ip> <port> [--count N] [--port-span M] [--send TEXT] [--wait-echo]
//!                          [--timeout-ms MS]
//! lab-client udp-sendto <ip> <port> [--count N] [--port-span M] [--send TEXT] [--wait-echo]
//!                       [--timeout-ms MS]
//! lab-client dns <server> <name> <A|AAAA|CNAME> [--tcp] [--connected] [--port P]
//!                [--edns SIZE | --no-edns] [--timeout-ms MS]
//! lab-client dns-self <root-owned|flood> <ipv4> [--count N] [--timeout-ms MS]
//! ```
//! `--port-span M` makes attempt `i` go to port `port + i % M` (many distinct flow keys).
//! Prints one JSON object on stdout. Exits 0 when every attempt succeeded, 1 when some failed,
//! 2 on bad usage. Fields:
//! - `tcp`: `cmd dst port count connected failed echoed errors` (first 5 error messages);
//! - `udp-*`: `cmd dst port count sent failed echoed errors`;
//! - `dns`: `cmd server port transport connected query qtype id`, then either `error` (nothing
//!   received), or `bytes raw_hex parsed` plus, when parsed, `rcode truncated edns_payload
//!   answers[{name type data ttl}]` (CNAME data is the absolute target), else `parse_error`.
//!   A received but unparsable answer still exits 0.
//! - `dns-self`: `cmd kind addr sent received`. The pod answers itself, as any pod can: from
//!   127.0.0.1:53 to a socket of its own on loopback, in its own network namespace, a DNS
//!   response giving `<ipv4>` to `root-owned` (question `evil.lab.test.`, an A record owned by
//!   the root name `.`) or to `flood` (`--count` responses, response `i` for
//!   `n<i>.flood.lab.test.`, so as many distinct names for one address). Paced so that the
//!   agent's DNS ring keeps up.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use leash_records::error::Chain;
use serde_json::{Value, json};

/// Upper bound on `--count`, so a typo cannot flood the lab.
const MAX_COUNT: u64 = 1_000_000;

const USAGE: &str = "usage:
  lab-client tcp <ip> <port> [--count N] [--port-span M] [--send TEXT] [--timeout-ms MS]
  lab-client udp-connected <ip> <port> [--count N] [--port-span M] [--send TEXT] [--wait-echo] [--timeout-ms MS]
  lab-client udp-sendto <ip> <port> [--count N] [--port-span M] [--send TEXT] [--wait-echo] [--timeout-ms MS]
  lab-client dns <server> <name> <A|AAAA|CNAME> [--tcp] [--connected] [--port P] [--edns SIZE | --no-edns] [--timeout-ms MS]
  lab-client dns-self <root-owned|flood> <ipv4> [--count N] [--timeout-ms MS]";

struct Opts {
    positional: Vec<String>,
    count: u64,
    port_span: u16,
    send: Option<String>,
    wait_echo: bool,
    timeout: Duration,
    tcp: bool,
    connected: bool,
    port: Option<u16>,
    edns: Option<u16>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        positional: Vec::new(),
        count: 1,
        port_span: 1,
        send: None,
        wait_echo: false,
        timeout: Duration::from_millis(2000),
        tcp: false,
        connected: false,
        port: None,
        edns: Some(1232),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--count" => {
                let v = value("--count")?;
                o.count = v.parse().map_err(|_| format!("bad --count {v:?}"))?;
                if o.count == 0 || o.count > MAX_COUNT {
                    return Err(format!("--count must be 1..={MAX_COUNT}"));
                }
            }
            "--send" => o.send = Some(value("--send")?),
            "--port-span" => {
                let v = value("--port-span")?;
                o.port_span = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("bad --port-span {v:?} (1..=65535)"))?;
            }
            "--wait-echo" => o.wait_echo = true,
            "--timeout-ms" => {
                let v = value("--timeout-ms")?;
                let ms: u64 = v.parse().map_err(|_| format!("bad --timeout-ms {v:?}"))?;
                o.timeout = Duration::from_millis(ms.clamp(1, 60_000));
            }
            "--tcp" => o.tcp = true,
            "--connected" => o.connected = true,
            "--port" => {
                let v = value("--port")?;
                o.port = Some(v.parse().map_err(|_| format!("bad --port {v:?}"))?);
            }
            "--edns" => {
                let v = value("--edns")?;
                o.edns = Some(v.parse().map_err(|_| format!("bad --edns {v:?}"))?);
            }
            "--no-edns" => o.edns = None,
            "--help" | "-h" => o.positional.insert(0, "help".to_owned()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => o.positional.push(s.to_owned()),
        }
    }
    Ok(o)
}

fn target(o: &Opts) -> Result<SocketAddr, String> {
    let [ip, port] = o.positional.get(1..3).ok_or("need <ip> <port>")? else {
        return Err("need <ip> <port>".into());
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("bad ip {ip:?}"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    if u32::from(port) + u32::from(o.port_span) - 1 > u32::from(u16::MAX) {
        return Err(format!(
            "port {port} + --port-span {} exceeds 65535",
            o.port_span
        ));
    }
    Ok(SocketAddr::new(ip, port))
}

/// The destination of attempt `i`: `--port-span` cycles through consecutive ports.
fn nth(dst: SocketAddr, span: u16, i: u64) -> SocketAddr {
    // `target` checked that port + span - 1 fits in a u16.
    let off = u16::try_from(i % u64::from(span)).unwrap_or(0);
    SocketAddr::new(dst.ip(), dst.port().saturating_add(off))
}

fn unspecified(dst: &SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

fn push_err(errors: &mut Vec<String>, e: impl std::fmt::Display) {
    if errors.len() < 5 {
        errors.push(e.to_string());
    }
}

fn cmd_tcp(o: &Opts) -> Result<(Value, bool), String> {
    let dst = target(o)?;
    let (mut connected, mut failed, mut echoed) = (0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    for i in 0..o.count {
        match TcpStream::connect_timeout(&nth(dst, o.port_span, i), o.timeout) {
            Ok(mut s) => {
                connected += 1;
                if let Some(text) = &o.send {
                    let _ = s.set_read_timeout(Some(o.timeout));
                    let mut buf = vec![0u8; text.len()];
                    match s
                        .write_all(text.as_bytes())
                        .and_then(|()| s.read_exact(&mut buf))
                    {
                        Ok(()) if buf == text.as_bytes() => echoed += 1,
                        Ok(()) => push_err(&mut errors, "echo mismatch"),
                        Err(e) => push_err(&mut errors, Chain(&e)),
                    }
                }
            }
            Err(e) => {
                failed += 1;
                push_err(&mut errors, Chain(&e));
            }
        }
    }
    let ok = failed == 0 && (o.send.is_none() || echoed == o.count);
    Ok((
        json!({"cmd": "tcp", "dst": dst.ip().to_string(), "port": dst.port(), "count": o.count,
               "connected": connected, "failed": failed, "echoed": echoed, "errors": errors}),
        ok,
    ))
}

fn cmd_udp(o: &Opts, connected_mode: bool) -> Result<(Value, bool), String> {
    let dst = target(o)?;
    let payload = o.send.clone().unwrap_or_else(|| "leash-lab".to_owned());
    let sock = UdpSocket::bind(unspecified(&dst)).map_err(|e| format!("bind: {}", Chain(&e)))?;
    sock.set_read_timeout(Some(o.timeout))
        .map_err(|e| format!("SO_RCVTIMEO: {}", Chain(&e)))?;
    if connected_mode && o.port_span == 1 {
        sock.connect(dst)
            .map_err(|e| format!("connect {dst}: {}", Chain(&e)))?;
    }
    let (mut sent, mut failed, mut echoed) = (0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    let mut buf = [0u8; 65_536];
    for i in 0..o.count {
        let to = nth(dst, o.port_span, i);
        let r = if connected_mode {
            // With a span, re-connect the socket to each port (one connect per send).
            let c = if o.port_span > 1 {
                sock.connect(to)
            } else {
                Ok(())
            };
            c.and_then(|()| sock.send(payload.as_bytes()))
        } else {
            sock.send_to(payload.as_bytes(), to)
        };
        match r {
            Ok(_) => sent += 1,
            Err(e) => {
                failed += 1;
                push_err(&mut errors, Chain(&e));
                continue;
            }
        }
        if o.wait_echo {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == to && &buf[..n] == payload.as_bytes() => echoed += 1,
                Ok((_, from)) => push_err(&mut errors, format!("unexpected reply from {from}")),
                Err(e) => push_err(&mut errors, Chain(&e)),
            }
        }
    }
    let ok = failed == 0 && (!o.wait_echo || echoed == o.count);
    let name = if connected_mode {
        "udp-connected"
    } else {
        "udp-sendto"
    };
    Ok((
        json!({"cmd": name, "dst": dst.ip().to_string(), "port": dst.port(), "count": o.count,
               "sent": sent, "failed": failed, "echoed": echoed, "errors": errors}),
        ok,
    ))
}

fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dns_exchange(o: &Opts, server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    if o.tcp {
        let mut s = TcpStream::connect_timeout(&server, o.timeout)
            .map_err(|e| format!("connect {server}: {}", Chain(&e)))?;
        s.set_read_timeout(Some(o.timeout))
            .map_err(|e| format!("SO_RCVTIMEO: {}", Chain(&e)))?;
        let len = u16::try_from(query.len()).map_err(|_| "query too long")?;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(query);
        s.write_all(&out)
            .map_err(|e| format!("write: {}", Chain(&e)))?;
        let mut lb = [0u8; 2];
        s.read_exact(&mut lb)
            .map_err(|e| format!("read length: {}", Chain(&e)))?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(lb))];
        s.read_exact(&mut body)
            .map_err(|e| format!("read body: {}", Chain(&e)))?;
        return Ok(body);
    }
    let sock = UdpSocket::bind(unspecified(&server)).map_err(|e| format!("bind: {}", Chain(&e)))?;
    sock.set_read_timeout(Some(o.timeout))
        .map_err(|e| format!("SO_RCVTIMEO: {}", Chain(&e)))?;
    if o.connected {
        sock.connect(server)
            .map_err(|e| format!("connect {server}: {}", Chain(&e)))?;
        sock.send(query)
            .map_err(|e| format!("send: {}", Chain(&e)))?;
    } else {
        sock.send_to(query, server)
            .map_err(|e| format!("sendto {server}: {}", Chain(&e)))?;
    }
    let mut buf = vec![0u8; 65_536];
    // Bounded: a few stray datagrams at most, each within the timeout.
    for _ in 0..8 {
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("recv: {}", Chain(&e)))?;
        if from == server && n >= 2 && buf[..2] == query[..2] {
            return Ok(buf[..n].to_vec());
        }
    }
    Err("no matching reply".into())
}

fn cmd_dns(o: &Opts) -> Result<(Value, bool), String> {
    let [server, name, qtype] = o
        .positional
        .get(1..4)
        .ok_or("need <server> <name> <qtype>")?
    else {
        return Err("need <server> <name> <qtype>".into());
    };
    let ip: IpAddr = server
        .parse()
        .map_err(|_| format!("bad server {server:?}"))?;
    let server = SocketAddr::new(ip, o.port.unwrap_or(53));
    let rtype = match qtype.to_ascii_uppercase().as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "CNAME" => RecordType::CNAME,
        other => return Err(format!("unsupported qtype {other:?} (A, AAAA, CNAME)")),
    };
    let mut qname =
        Name::from_ascii(name).map_err(|e| format!("bad name {name:?}: {}", Chain(&e)))?;
    qname.set_fqdn(true);
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname.clone(), rtype));
    if let Some(size) = o.edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    let query = msg
        .to_vec()
        .map_err(|e| format!("encode query: {}", Chain(&e)))?;
    let transport = if o.tcp { "tcp" } else { "udp" };
    let base = json!({"cmd": "dns", "server": ip.to_string(), "port": server.port(),
                      "transport": transport, "connected": o.connected,
                      "query": qname.to_ascii(), "qtype": rtype.to_string(),
                      "id": msg.metadata.id});
    let mut out = match base {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let bytes = match dns_exchange(o, server, &query) {
        Ok(b) => b,
        Err(e) => {
            out.insert("error".into(), e.into());
            return Ok((Value::Object(out), false));
        }
    };
    out.insert("bytes".into(), bytes.len().into());
    out.insert("raw_hex".into(), hex(&bytes).into());
    match Message::from_vec(&bytes) {
        Ok(m) => {
            let answers: Vec<Value> = m
                .answers
                .iter()
                .map(|r| {
                    let data = match &r.data {
                        RData::A(a) => a.0.to_string(),
                        RData::AAAA(a) => a.0.to_string(),
                        RData::CNAME(c) => c.0.to_ascii(),
                        other => other.to_string(),
                    };
                    json!({"name": r.name.to_ascii(), "type": r.record_type().to_string(),
                           "data": data, "ttl": r.ttl})
                })
                .collect();
            out.insert("parsed".into(), true.into());
            out.insert(
                "rcode".into(),
                rcode_name(u16::from(m.metadata.response_code)).into(),
            );
            out.insert("truncated".into(), m.metadata.truncation.into());
            out.insert(
                "edns_payload".into(),
                m.edns.as_ref().map(Edns::max_payload).into(),
            );
            out.insert("answers".into(), answers.into());
        }
        Err(e) => {
            out.insert("parsed".into(), false.into());
            out.insert("parse_error".into(), Chain(&e).to_string().into());
        }
    }
    Ok((Value::Object(out), true))
}

/// Responses sent between pauses by `dns-self`: the agent's DNS ring holds about 500 records.
const SELF_BURST: u64 = 64;

fn cmd_dns_self(o: &Opts) -> Result<(Value, bool), String> {
    let [kind, addr] = o.positional.get(1..3).ok_or("need <kind> <ipv4>")? else {
        return Err("need <kind> <ipv4>".into());
    };
    let ip: Ipv4Addr = addr.parse().map_err(|_| format!("bad ipv4 {addr:?}"))?;
    let a = |owner: Name| Record::from_rdata(owner, 60, RData::A(A(ip)));
    let responses: Vec<(Name, Record)> = match kind.as_str() {
        "root-owned" => {
            let query = Name::from_ascii("evil.lab.test.").map_err(|e| Chain(&e).to_string())?;
            vec![(query, a(Name::root()))]
        }
        "flood" => (0..o.count)
            .map(|i| {
                let name = Name::from_ascii(format!("n{i}.flood.lab.test."))
                    .map_err(|e| Chain(&e).to_string())?;
                Ok((name.clone(), a(name)))
            })
            .collect::<Result<_, String>>()?,
        other => {
            return Err(format!(
                "unknown dns-self kind {other:?} (root-owned, flood)"
            ));
        }
    };
    let loopback = Ipv4Addr::LOCALHOST;
    let server =
        UdpSocket::bind((loopback, 53)).map_err(|e| format!("bind 127.0.0.1:53: {}", Chain(&e)))?;
    let client = UdpSocket::bind((loopback, 0)).map_err(|e| format!("bind: {}", Chain(&e)))?;
    client
        .set_read_timeout(Some(o.timeout))
        .map_err(|e| format!("SO_RCVTIMEO: {}", Chain(&e)))?;
    let to = client
        .local_addr()
        .map_err(|e| format!("local_addr: {}", Chain(&e)))?;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut buf = vec![0u8; 4096];
    for (i, (query, answer)) in responses.into_iter().enumerate() {
        let mut msg = Message::response(u16::try_from(i % 65_536).unwrap_or(0), OpCode::Query);
        msg.add_query(Query::query(query, RecordType::A));
        msg.add_answer(answer);
        let bytes = msg
            .to_vec()
            .map_err(|e| format!("encode response: {}", Chain(&e)))?;
        server
            .send_to(&bytes, to)
            .map_err(|e| format!("sendto {to}: {}", Chain(&e)))?;
        sent += 1;
        if client.recv(&mut buf).is_ok() {
            received += 1;
        }
        if sent % SELF_BURST == 0 {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    let out = json!({"cmd": "dns-self", "kind": kind, "addr": ip.to_string(),
                     "sent": sent, "received": received});
    Ok((out, received == sent))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lab-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let res = match opts.positional.first().map(String::as_str) {
        Some("tcp") => cmd_tcp(&opts),
        Some("udp-connected") => cmd_udp(&opts, true),
        Some("udp-sendto") => cmd_udp(&opts, false),
        Some("dns") => cmd_dns(&opts),
        Some("dns-self") => cmd_dns_self(&opts),
        Some("help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}")),
    };
    match res {
        Ok((v, ok)) => {
            println!("{v}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lab-client: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
