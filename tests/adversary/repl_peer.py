#!/usr/bin/env python3
"""A hostile replication peer, written from docs/replication.md alone.

Run by tests/adversary.rs, usually as an unprivileged user (`runuser -u
nobody`), against a hastd on loopback. Each mode prints one JSON object per
attempt on stdout, e.g. {"mode": "auth", "result": "refused"}. It never
needs hast's code: everything it sends is built here, byte by byte.

  hello-first HOST PORT [--epoch N] [--resource R]
      ignore the challenge and send a HELLO at once (the attack of old:
      a forged primary with a huge epoch)
  auth HOST PORT --resource R [--key-file F] [--then-hello] [--epoch N]
       [--bad-hello-checksum] [--resuid N] [--localcnt N] [--remotecnt N]
       [--datasize N] [--extentsize N] [--no-write] [--repeat N] [--hold] [--print-auth]
      authenticate with the key in F (or a random one), then optionally send
      a HELLO (and a WRITE unless --no-write), N times; --hold keeps every
      connection open until the end
  replay HOST PORT --auth-hex HEX
      send a previously recorded AUTH frame to a fresh challenge
  fake-secondary PORT --seconds S [--reflect]
      bind PORT and answer primaries as if it were their secondary, with a
      MAC it cannot compute (or the primary's own MAC reflected)
  flood HOST PORT --count N
      open N connections, each sending junk or nothing, and close them
"""

import argparse
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time

MAGIC = 0x48415354
FRAME_VERSION = 1
PROTOCOL_VERSION = 2
CRC32C = 2
KIND = {"HELLO": 1, "HELLO_REPLY": 2, "WRITE": 4, "CHALLENGE": 13, "AUTH": 14, "AUTH_REPLY": 15}
KIND_NAME = {v: k for k, v in KIND.items()}


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def message_frame(kind, payload, bad_checksum=False):
    head = struct.pack("<IBBBBQQII", MAGIC, FRAME_VERSION, KIND[kind], 0, CRC32C, 0, 0, 0, len(payload))
    digest = crc32c(payload)
    if bad_checksum:
        digest ^= 1
    return head + struct.pack("<I", digest) + payload


def write_frame(offset, data):
    """A WRITE frame, no checksum, as a primary sends client data."""
    head = struct.pack("<IBBBBQQII", MAGIC, FRAME_VERSION, KIND["WRITE"], 0, 0, 1, offset, len(data), len(data))
    return head + data


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    return buf


def read_frame(sock):
    head = recv_exact(sock, 32)
    magic, _ver, kind, _flags, checksum, _seq, _off, _len, plen = struct.unpack("<IBBBBQQII", head)
    if magic != MAGIC:
        raise ValueError("bad magic")
    dlen = {0: 0, 1: 4, 2: 4, 3: 32}[checksum]
    recv_exact(sock, dlen)
    return KIND_NAME.get(kind, str(kind)), recv_exact(sock, plen)


def lp(s):
    b = s.encode()
    return bytes([len(b)]) + b


def hello(resource, node, epoch, resuid, localcnt=1, remotecnt=1, datasize=1 << 30, extentsize=2 << 20):
    # version, role primary, flags, resuid, localcnt, remotecnt, datasize,
    # extentsize, epoch, resource, node (crates/hast-repl/src/hello.rs)
    return (
        struct.pack(
            "<IBBQQQQIQ", PROTOCOL_VERSION, 1, 0, resuid, localcnt, remotecnt, datasize, extentsize, epoch
        )
        + lp(resource)
        + lp(node)
    )


def mac(key, label, version, ns, np_, resource, node_p, node_s=None):
    m = hmac.new(key, digestmod=hashlib.sha256)
    m.update(label)
    m.update(struct.pack("<I", version))
    m.update(ns)
    m.update(np_)
    for s in (resource, node_p) + ((node_s,) if node_s is not None else ()):
        m.update(lp(s))
    return m.digest()


def read_key(path):
    if path is None:
        return os.urandom(24).hex().encode()
    with open(path, "rb") as f:
        return f.read().split(b"\n")[0].strip()


def emit(**kw):
    print(json.dumps(kw), flush=True)


def connect(host, port):
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(5)
    return s


def outcome(sock):
    """What the peer did next: a frame, or closed / silent."""
    try:
        kind, payload = read_frame(sock)
        return kind, payload
    except (EOFError, ConnectionResetError):
        return "closed", b""
    except socket.timeout:
        return "silent", b""


def cmd_hello_first(a):
    s = connect(a.host, a.port)
    first, _ = outcome(s)
    s.sendall(message_frame("HELLO", hello(a.resource, "nodea", a.epoch, 1)))
    kind, payload = outcome(s)
    emit(mode="hello-first", first=first, result=kind, text=payload.decode(errors="replace"))


HELD = []


def cmd_auth(a):
    for _ in range(a.repeat):
        auth_once(a)
        if a.hold:
            # Give the secondary time to attach this session before the next
            # connection replaces it.
            time.sleep(0.05)


def auth_once(a):
    key = read_key(a.key_file)
    s = connect(a.host, a.port)
    kind, payload = read_frame(s)
    assert kind == "CHALLENGE", kind
    version, ns = struct.unpack("<I", payload[:4])[0], payload[4:]
    np_ = os.urandom(32)
    tag = mac(key, b"hast-repl P>S\0", version, ns, np_, a.resource, "nodea")
    auth = np_ + tag + lp(a.resource) + lp("nodea")
    frame = message_frame("AUTH", auth)
    if a.print_auth:
        emit(mode="auth-record", auth_hex=frame.hex())
    s.sendall(frame)
    kind, payload = outcome(s)
    result = kind
    if kind == "AUTH_REPLY":
        result = "ok" if payload[0] == 0 else "refused"
    rec = dict(mode="auth", result=result, reply_hex=payload.hex())
    if result == "ok" and a.then_hello:
        h = hello(a.resource, "nodea", a.epoch, a.resuid, a.localcnt, a.remotecnt, a.datasize, a.extentsize)
        s.sendall(message_frame("HELLO", h, a.bad_hello_checksum))
        if not a.no_write:
            s.sendall(write_frame(0, b"\xAA" * 4096))
        kind, payload = outcome(s)
        rec.update(hello_result=kind, text=payload[4:].decode(errors="replace"))
    if a.hold:
        HELD.append(s)  # open until the process exits: the session stays live
    emit(**rec)


def cmd_replay(a):
    s = connect(a.host, a.port)
    kind, _ = read_frame(s)
    assert kind == "CHALLENGE", kind
    s.sendall(bytes.fromhex(a.auth_hex))
    kind, payload = outcome(s)
    result = kind
    if kind == "AUTH_REPLY":
        result = "ok" if payload[0] == 0 else "refused"
    emit(mode="replay", result=result, reply_hex=payload.hex())


def cmd_fake_secondary(a):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", a.port))
    ls.listen(16)
    ls.settimeout(0.5)
    emit(mode="fake-secondary", event="listening")
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        c.settimeout(5)
        try:
            c.sendall(message_frame("CHALLENGE", struct.pack("<I", PROTOCOL_VERSION) + os.urandom(32)))
            kind, payload = read_frame(c)
            if kind != "AUTH":
                emit(mode="fake-secondary", event="unexpected", kind=kind)
                continue
            tag = payload[32:64] if a.reflect else os.urandom(32)
            c.sendall(message_frame("AUTH_REPLY", b"\x00" + tag + lp("nodeb")))
            kind, payload = outcome(c)
            # A primary that believed us would now send its HELLO.
            emit(mode="fake-secondary", event="after-reply", kind=kind)
        except Exception as e:  # noqa: BLE001 - report and keep serving
            emit(mode="fake-secondary", event="error", error=str(e))
        finally:
            c.close()


def cmd_flood(a):
    counts = {}
    for i in range(a.count):
        try:
            s = socket.create_connection((a.host, a.port), timeout=5)
            if i % 3 == 1:
                s.sendall(b"\x00" * 40)
            elif i % 3 == 2:
                s.sendall(message_frame("HELLO", hello("r0", "nodea", 1 << 62, 1)))
            s.close()
            counts["closed"] = counts.get("closed", 0) + 1
        except OSError as e:
            counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
    emit(mode="flood", counts=counts)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hello-first")
    h.add_argument("host")
    h.add_argument("port", type=int)
    h.add_argument("--epoch", type=int, default=1 << 62)
    h.add_argument("--resource", default="r0")
    au = sub.add_parser("auth")
    au.add_argument("host")
    au.add_argument("port", type=int)
    au.add_argument("--resource", required=True)
    au.add_argument("--key-file")
    au.add_argument("--then-hello", action="store_true")
    au.add_argument("--epoch", type=int, default=1)
    au.add_argument("--resuid", type=int, default=1)
    au.add_argument("--localcnt", type=int, default=1)
    au.add_argument("--remotecnt", type=int, default=1)
    au.add_argument("--datasize", type=int, default=1 << 30)
    au.add_argument("--extentsize", type=int, default=2 << 20)
    au.add_argument("--no-write", action="store_true")
    au.add_argument("--repeat", type=int, default=1)
    au.add_argument("--hold", action="store_true")
    au.add_argument("--bad-hello-checksum", action="store_true")
    au.add_argument("--print-auth", action="store_true")
    r = sub.add_parser("replay")
    r.add_argument("host")
    r.add_argument("port", type=int)
    r.add_argument("--auth-hex", required=True)
    f = sub.add_parser("fake-secondary")
    f.add_argument("port", type=int)
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--reflect", action="store_true")
    fl = sub.add_parser("flood")
    fl.add_argument("host")
    fl.add_argument("port", type=int)
    fl.add_argument("--count", type=int, required=True)
    a = p.parse_args()
    {
        "hello-first": cmd_hello_first,
        "auth": cmd_auth,
        "replay": cmd_replay,
        "fake-secondary": cmd_fake_secondary,
        "flood": cmd_flood,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
