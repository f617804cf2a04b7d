#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (tests/fuzz/seeds/<target>/) from the project's fixtures.

Run from the repository root: `python3 tests/fuzz/make_seeds.py`. The output is committed; run
it again after changing a fixture it reads. Deterministic: the same fixtures give the same bytes.

- dns_payload: real DNS answer messages built from the `kind: dns` records of the fixtures'
  flows.jsonl (A, AAAA, CNAME chains, compression pointers), over UDP and over TCP (length
  prefix, two answers in one segment, a message cut short), in the target's input layout.
- record_reader, flow_line: the fixtures' record lines.
- snapshot: the kubeadm cluster snapshot, fragments of it, and one as JSON.
- proto_batch: leash.v1.Batch messages encoded from the fixtures' records.
- cidr_ports: the ipBlocks and ports of the eval fixtures' policies.
- ip_ranges: the provider range fixtures.
"""

import hashlib
import ipaddress
import json
import os
import struct
import sys
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "recommender", "tests", "fixtures")
OUT = os.path.join(ROOT, "tests", "fuzz", "seeds")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def records():
    out = []
    for path in [
        os.path.join(FIX, "recommend", "kubeadm", "flows.jsonl"),
        os.path.join(FIX, "eval", "flows.jsonl"),
    ]:
        with open(path) as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


# --- DNS messages (RFC 1035), with name compression as resolvers send them ----------------

TYPES = {"A": 1, "CNAME": 5, "AAAA": 28, "TXT": 16}


class Message:
    def __init__(self, ident, flags):
        self.buf = bytearray(struct.pack(">HHHHHH", ident, flags, 0, 0, 0, 0))
        self.names = {}

    def name(self, name):
        labels = [l for l in name.rstrip(".").split(".") if l]
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            if suffix in self.names:
                self.buf += struct.pack(">H", 0xC000 | self.names[suffix])
                return
            if len(self.buf) < 0x3FFF:
                self.names[suffix] = len(self.buf)
            label = labels[i].encode()
            self.buf += bytes([len(label)]) + label
        self.buf += b"\0"

    def count(self, index):
        at = 4 + 2 * index
        (n,) = struct.unpack_from(">H", self.buf, at)
        struct.pack_into(">H", self.buf, at, n + 1)

    def question(self, name, qtype):
        self.name(name)
        self.buf += struct.pack(">HH", TYPES.get(qtype, 1), 1)
        self.count(0)

    def answer(self, name, rtype, data, ttl):
        self.name(name)
        self.buf += struct.pack(">HHI", TYPES[rtype], 1, ttl)
        at = len(self.buf)
        self.buf += b"\0\0"
        if rtype in ("A", "AAAA"):
            self.buf += ipaddress.ip_address(data).packed
        elif rtype == "CNAME":
            self.name(data)
        else:
            text = data.encode()[:255]
            self.buf += bytes([len(text)]) + text
        struct.pack_into(">H", self.buf, at, len(self.buf) - at - 2)
        self.count(1)


def dns_message(rec, ident):
    rcode = {"NOERROR": 0, "NXDOMAIN": 3, "SERVFAIL": 2}.get(rec["rcode"], 0)
    m = Message(ident, 0x8180 | rcode)  # QR, RD, RA
    m.question(rec["query"], rec["qtype"])
    for a in rec["answers"]:
        if a["type"] in TYPES:
            m.answer(a["name"], a["type"], a["data"], a["ttl"])
    return bytes(m.buf)


def dns_seeds(recs):
    # Target layout: mode byte (bit 1 TCP prefix flag, bit 2 truncated flag, bit 3 TCP,
    # bit 4 IPv6 server), bytes missing beyond the capture, then the payload.
    udp, tcp = 0, 2 | 8
    msgs = []
    seen = set()
    for rec in recs:
        if rec["kind"] != "dns":
            continue
        msg = dns_message(rec, 0x1000 + len(msgs))
        key = hashlib.sha256(msg[2:]).digest()
        if key not in seen:
            seen.add(key)
            msgs.append((rec["query"], msg))
    extra = Message(0x2222, 0x8180)
    extra.question("www.shop.test.", "AAAA")
    extra.answer("www.shop.test.", "CNAME", "edge.cdn.test.", 30)
    extra.answer("edge.cdn.test.", "CNAME", "edge-v6.cdn.test.", 30)
    extra.answer("edge-v6.cdn.test.", "AAAA", "2001:db8::10", 30)
    extra.answer("edge-v6.cdn.test.", "AAAA", "2001:db8::11", 30)
    msgs.append(("cname-chain-v6", bytes(extra.buf)))
    txt = Message(0x3333, 0x8180)
    txt.question("shop.test.", "TXT")
    txt.answer("shop.test.", "TXT", "v=spf1 -all", 300)
    msgs.append(("txt", bytes(txt.buf)))
    for i, (query, msg) in enumerate(msgs):
        tag = query.strip(".").replace(".", "_")[:40]
        write("dns_payload", f"udp-{i:02}-{tag}", bytes([udp, 0]) + msg)
    first, second = msgs[0][1], msgs[-2][1]
    prefixed = struct.pack(">H", len(first)) + first
    write("dns_payload", "tcp-one", bytes([tcp, 0]) + prefixed)
    write("dns_payload", "tcp-two-in-one-segment",
          bytes([tcp, 0]) + prefixed + struct.pack(">H", len(second)) + second)
    # The first segment of an answer longer than the segment: the prefix says more.
    write("dns_payload", "tcp-first-segment", bytes([tcp | 4, 200]) + prefixed[: len(prefixed) // 2])
    write("dns_payload", "udp-v6-server", bytes([udp | 16, 0]) + second)
    write("dns_payload", "udp-cut-by-capture", bytes([udp | 4, 64]) + first[: len(first) - 8])
    # Raw mode (bit 0): a whole ring record, header included (agent_ebpf::DnsHeader, 48 bytes).
    header = struct.pack("<QQ16sHBBB3sII", 7, 1_000_000_000,
                         ipaddress.ip_address("2001:db8::53").packed, 53, 6, 6, 1,
                         b"\0\0\0", len(prefixed), len(prefixed))
    write("dns_payload", "raw-ring-record-tcp-v6", bytes([1]) + header + prefixed)


# --- protobuf (leash.v1.Batch), the few wire types it uses --------------------------------

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def s(num, text):
    return field(num, 2, text.encode()) if text else b""


def u(num, n):
    return field(num, 0, n) if n else b""


def nanos(text):
    t = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def pod(p):
    return s(1, p.get("uid", "")) + s(2, p["namespace"]) + s(3, p["name"])


def flow(r, grouped):
    out = b""
    if not grouped:
        if r.get("pod"):
            out += field(1, 2, pod(r["pod"]))
        out += s(2, r.get("cgroup", ""))
    out += u(3, {"TCP": 1, "UDP": 2, "SCTP": 3}[r["protocol"]])
    out += field(4, 2, ipaddress.ip_address(r["dst"]).packed)
    out += u(5, r["dst_port"]) + u(6, r["count"])
    out += u(7, nanos(r["first_seen"])) + u(8, nanos(r["last_seen"]))
    for n in r.get("names", []):
        out += s(9, n)
    if r.get("outcome"):
        o = r["outcome"]
        out += field(10, 2, u(1, o["established"]) + u(2, o["failed"]))
    return out


def dns(r):
    out = b""
    if r.get("pod"):
        out += field(1, 2, pod(r["pod"]))
    out += s(2, r.get("cgroup", ""))
    out += field(3, 2, ipaddress.ip_address(r["server"]).packed)
    out += s(4, r["query"]) + s(5, r["qtype"]) + s(6, r["rcode"])
    for a in r.get("answers", []):
        out += field(7, 2, s(1, a["name"]) + s(2, a["type"]) + s(3, a["data"]) + u(4, a["ttl"]))
    out += u(8, nanos(r["time"]))
    return out


def batch_id(node, seq):
    return field(1, 2, s(1, node) + s(2, "3f0e6b7a-0000-4000-8000-000000000001") + u(3, seq))


def proto_seeds(recs):
    flows = [r for r in recs if r["kind"] == "flow"]
    dnss = [r for r in recs if r["kind"] == "dns"]
    node = flows[0].get("node") or "n1"
    # Flows each with its own source, and DNS records.
    write("proto_batch", "flows-and-dns",
          batch_id(node, 1) + b"".join(field(2, 2, flow(r, False)) for r in flows[:6])
          + b"".join(field(3, 2, dns(r)) for r in dnss[:3]))
    # Flows grouped by source, as the agent sends them.
    groups = b""
    for r in flows[:8]:
        g = b""
        if r.get("pod"):
            g += field(1, 2, pod(r["pod"]))
        g += s(2, r.get("cgroup", "")) + field(3, 2, flow(r, True))
        groups += field(4, 2, g)
    write("proto_batch", "flow-groups", batch_id(node, 2) + groups)
    write("proto_batch", "empty", batch_id(node, 3))


def main():
    recs = records()
    for target in ["dns_payload", "record_reader", "flow_line", "snapshot", "proto_batch",
                   "cidr_ports", "ip_ranges"]:
        d = os.path.join(OUT, target)
        if os.path.isdir(d):
            for f in os.listdir(d):
                os.remove(os.path.join(d, f))
    dns_seeds(recs)
    proto_seeds(recs)

    for path, name in [(os.path.join(FIX, "recommend", "kubeadm", "flows.jsonl"), "kubeadm"),
                       (os.path.join(FIX, "eval", "flows.jsonl"), "eval")]:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        write("record_reader", f"{name}.jsonl", "\n".join(lines) + "\n")
        write("record_reader", f"{name}-first-three.jsonl", "\n".join(lines[:3]) + "\n")
        flows = [l for l in lines if '"kind":"flow"' in l]
        for i, line in enumerate(flows[:4]):
            write("flow_line", f"{name}-flow-{i}", line)
        dnsl = [l for l in lines if '"kind":"dns"' in l]
        if dnsl:
            write("flow_line", f"{name}-dns", dnsl[0])

    with open(os.path.join(FIX, "recommend", "kubeadm", "cluster.yaml")) as f:
        cluster = f.read()
    write("snapshot", "kubeadm-list.yaml", cluster)
    items = cluster.split("\n- ")
    header, items = items[0], items[1:]
    # Multi-document fragments of the List: a few objects each.
    for i in range(0, min(len(items), 24), 6):
        docs = ["\n".join(l[2:] if l.startswith("  ") else l for l in ("  " + it).splitlines())
                for it in items[i:i + 6]]
        write("snapshot", f"kubeadm-docs-{i // 6}.yaml", "---\n" + "\n---\n".join(docs) + "\n")
    write("snapshot", "namespace.json", json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "shop", "labels": {"team": "shop"}}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "payment-7d4-x2", "namespace": "shop", "uid": "u1",
                          "labels": {"app": "payment"}},
             "spec": {"containers": [{"name": "app", "image": "x",
                                      "ports": [{"name": "https", "containerPort": 8443}]}]},
             "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}}]}))

    # cidr_ports: cidr, excepts, protocol, port, endPort (one per line).
    for i, fields in enumerate([
        ["203.0.113.0/24", "", "", "443", ""],
        ["0.0.0.0/0", "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16", "TCP", "443", ""],
        ["2001:db8::/32", "2001:db8:1::/48", "UDP", "53", ""],
        ["198.51.100.0/24", "", "TCP", "8000", "8080"],
        ["203.0.113.10/32", "", "SCTP", "pg", ""],
        ["10.0.0.1/24", "", "TCP", "5432", "5431"],
    ]):
        write("cidr_ports", f"entry-{i}", "\n".join(fields))

    rdir = os.path.join(FIX, "ranges")
    for name in sorted(os.listdir(rdir)):
        with open(os.path.join(rdir, name), "rb") as f:
            write("ip_ranges", name, f.read())


if __name__ == "__main__":
    sys.exit(main())
