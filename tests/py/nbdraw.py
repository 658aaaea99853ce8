"""A raw NBD client over a plain socket, for requests no well-behaved client sends.

libnbd refuses to put malformed bytes on the wire (unknown commands, bad magic,
broken handshakes), so the conformance tests speak the protocol by hand here.
Only what the tests need: fixed-newstyle handshake, options and their replies,
requests with any flags/type/length, simple and structured replies.
Every socket operation has a timeout; nothing here waits forever.
"""

import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR + 1
REP_ERR_POLICY = REP_ERR + 2
REP_ERR_INVALID = REP_ERR + 3
REP_ERR_PLATFORM = REP_ERR + 4
REP_ERR_TLS_REQD = REP_ERR + 5
REP_ERR_UNKNOWN = REP_ERR + 6
REP_ERR_SHUTDOWN = REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8
REP_ERR_TOO_BIG = REP_ERR + 9

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR_BIT = 1 << 15

EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

REP_NAMES = {
    REP_ACK: "ACK", REP_SERVER: "SERVER", REP_INFO: "INFO", REP_META_CONTEXT: "META_CONTEXT",
    REP_ERR_UNSUP: "ERR_UNSUP", REP_ERR_POLICY: "ERR_POLICY", REP_ERR_INVALID: "ERR_INVALID",
    REP_ERR_PLATFORM: "ERR_PLATFORM", REP_ERR_TLS_REQD: "ERR_TLS_REQD",
    REP_ERR_UNKNOWN: "ERR_UNKNOWN", REP_ERR_SHUTDOWN: "ERR_SHUTDOWN",
    REP_ERR_BLOCK_SIZE_REQD: "ERR_BLOCK_SIZE_REQD", REP_ERR_TOO_BIG: "ERR_TOO_BIG",
}

ERRNO_NAMES = {0: "OK", 1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC",
               75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}

# Payloads this client agrees to read from a server, a bound on bad servers.
REPLY_LEN_MAX = 64 * 1024 * 1024


def rep_name(t):
    return REP_NAMES.get(t, hex(t))


def errno_name(e):
    return ERRNO_NAMES.get(e, str(e))


class Closed(Exception):
    """The server closed (or reset) the connection."""


class Timeout(Exception):
    """The server did not answer in time."""


class ProtocolError(Exception):
    """The server sent something that is not NBD."""


class Conn:
    """One connection to an NBD server, driven byte by byte."""

    def __init__(self, addr, timeout=10.0):
        """addr: ("tcp", host, port) or ("unix", path)."""
        if addr[0] == "tcp":
            self.sock = socket.create_connection((addr[1], addr[2]), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(addr[1])
        self.sock.settimeout(timeout)
        self.structured = False
        self.pending = {}  # cookie -> (cmd, length)
        self.next_cookie = 1
        self.size = None
        self.tflags = None
        self.hflags = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- bytes ----
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e))
        except socket.timeout:
            raise Timeout("send")

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                raise Timeout("waiting for %d bytes, got %d" % (n, len(buf)))
            except ConnectionResetError as e:
                raise Closed(str(e))
            if not chunk:
                raise Closed("EOF after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def wait_closed(self, timeout=10.0):
        """True if the server closes the connection within timeout (data it sends
        meanwhile is discarded), False if it is still open then."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    # ---- handshake ----
    def greeting(self):
        magic, opt = struct.unpack(">QQ", self.recv_exact(16))
        if magic != NBDMAGIC:
            raise ProtocolError("bad NBDMAGIC %x" % magic)
        if opt != IHAVEOPT:
            raise ProtocolError("not newstyle (%x)" % opt)
        (self.hflags,) = struct.unpack(">H", self.recv_exact(2))
        return self.hflags

    def handshake(self, client_flags=None):
        hflags = self.greeting()
        if client_flags is None:
            client_flags = hflags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        self.client_flags = client_flags
        self.send(struct.pack(">I", client_flags))
        return hflags

    def send_option(self, opt, data=b"", length=None, magic=IHAVEOPT):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", magic, opt, length) + data)

    def read_option_reply(self):
        magic, opt, typ, length = struct.unpack(">QIII", self.recv_exact(20))
        if magic != OPT_REPLY_MAGIC:
            raise ProtocolError("bad option reply magic %x" % magic)
        if length > REPLY_LEN_MAX:
            raise ProtocolError("option reply of %d bytes" % length)
        data = self.recv_exact(length) if length else b""
        return opt, typ, data

    def option(self, opt, data=b"", **kw):
        """Send an option and collect replies up to the final one.
        Returns (list of (type, data), final type)."""
        self.send_option(opt, data, **kw)
        replies = []
        for _ in range(100000):
            ropt, typ, rdata = self.read_option_reply()
            if ropt != opt:
                raise ProtocolError("reply to option %d while %d was sent" % (ropt, opt))
            replies.append((typ, rdata))
            if typ == REP_ACK or typ & REP_ERR:
                return replies, typ
        raise ProtocolError("endless option replies")

    @staticmethod
    def name_data(name, infos=()):
        n = name.encode()
        return struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos)) + b"".join(
            struct.pack(">H", i) for i in infos)

    def opt_structured_reply(self):
        _, typ = self.option(OPT_STRUCTURED_REPLY)
        if typ == REP_ACK:
            self.structured = True
        return typ

    def opt_go(self, name, infos=(INFO_BLOCK_SIZE,)):
        """NBD_OPT_GO; returns (final reply type, dict of infos)."""
        replies, typ = self.option(OPT_GO, self.name_data(name, infos))
        info = {}
        for t, d in replies:
            if t == REP_INFO and len(d) >= 2:
                (it,) = struct.unpack(">H", d[:2])
                if it == INFO_EXPORT and len(d) >= 12:
                    self.size, self.tflags = struct.unpack(">QH", d[2:12])
                    info["size"], info["tflags"] = self.size, self.tflags
                elif it == INFO_BLOCK_SIZE and len(d) >= 14:
                    info["block_size"] = struct.unpack(">III", d[2:14])
        return typ, info

    def opt_list(self):
        replies, typ = self.option(OPT_LIST)
        names = []
        for t, d in replies:
            if t == REP_SERVER and len(d) >= 4:
                (n,) = struct.unpack(">I", d[:4])
                names.append(d[4:4 + n].decode(errors="replace"))
        return typ, names

    def connect_export(self, name, structured=True):
        """Full handshake into transmission: fixed newstyle, optional structured
        replies, GO. Raises on failure."""
        self.handshake()
        if structured:
            self.opt_structured_reply()
        typ, info = self.opt_go(name)
        if typ != REP_ACK:
            raise ProtocolError("GO %s refused: %s" % (name, rep_name(typ)))
        return info

    # ---- transmission ----
    def send_request(self, cmd, offset=0, length=0, flags=0, payload=b"", cookie=None,
                     magic=REQUEST_MAGIC):
        if cookie is None:
            cookie = self.next_cookie
            self.next_cookie += 1
        self.pending[cookie] = (cmd, length)
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + payload)
        return cookie

    def read_reply(self):
        """Read one whole reply (all chunks of a structured one).
        Returns dict(cookie, error, data, chunks)."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_REPLY_MAGIC:
            error, cookie = struct.unpack(">IQ", self.recv_exact(12))
            cmd, length = self.pending.pop(cookie, (None, 0))
            data = b""
            if cmd == CMD_READ and error == 0:
                data = self.recv_exact(length)
            return {"cookie": cookie, "error": error, "data": data, "simple": True}
        if magic != STRUCTURED_REPLY_MAGIC:
            raise ProtocolError("bad reply magic %x" % magic)
        chunks = []
        error = 0
        data = {}
        for _ in range(1 << 20):
            if chunks:
                (magic,) = struct.unpack(">I", self.recv_exact(4))
                if magic != STRUCTURED_REPLY_MAGIC:
                    raise ProtocolError("bad chunk magic %x" % magic)
            flags, typ, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
            if length > REPLY_LEN_MAX:
                raise ProtocolError("chunk of %d bytes" % length)
            payload = self.recv_exact(length) if length else b""
            chunks.append((flags, typ, cookie, payload))
            if typ & REPLY_TYPE_ERROR_BIT:
                (error,) = struct.unpack(">I", payload[:4])
            elif typ == REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack(">Q", payload[:8])
                data[off] = payload[8:]
            elif typ == REPLY_TYPE_OFFSET_HOLE:
                off, hlen = struct.unpack(">QI", payload[:12])
                data[off] = bytes(hlen)
            if flags & REPLY_FLAG_DONE:
                break
            # Chunks of different cookies may interleave; this client only ever
            # waits for one request at a time when it reads structured replies.
        cmd, rlen = self.pending.pop(cookie, (None, 0))
        return {"cookie": cookie, "error": error, "chunks": chunks, "simple": False,
                "data": assemble(data)}

    def request(self, cmd, offset=0, length=0, flags=0, payload=b""):
        """Send one request and wait for its reply."""
        cookie = self.send_request(cmd, offset, length, flags, payload)
        r = self.read_reply()
        if r["cookie"] != cookie:
            raise ProtocolError("reply for cookie %d, expected %d" % (r["cookie"], cookie))
        return r

    def read(self, offset, length, flags=0):
        return self.request(CMD_READ, offset, length, flags)

    def write(self, offset, data, flags=0):
        return self.request(CMD_WRITE, offset, len(data), flags, data)

    def disc(self):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))


def assemble(pieces):
    """Join OFFSET_DATA/HOLE pieces (offset -> bytes) in offset order."""
    return b"".join(pieces[k] for k in sorted(pieces))


def parse_addr(s):
    """'tcp:HOST:PORT' or 'unix:PATH'."""
    kind, rest = s.split(":", 1)
    if kind == "tcp":
        host, port = rest.rsplit(":", 1)
        return ("tcp", host, int(port))
    if kind == "unix":
        return ("unix", rest)
    raise ValueError("address must be tcp:HOST:PORT or unix:PATH, not %r" % s)
