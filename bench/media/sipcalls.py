#!/usr/bin/env python3
"""bench/media/sipcalls.py: sets up relayed calls through a medpool node with real INVITEs, playing both the
caller (the PBX) and the gateway, and keeps answering until told to stop (OPTIONS probes, BYEs).

    sipcalls.py NODE CALLER GATEWAY CALLS K CALLER_MEDIA_IP CBASE GW_MEDIA_IP GBASE PAIRS_OUT [MODE]

NODE, CALLER and GATEWAY are ip:port. Call i: the caller's offer announces CALLER_MEDIA_IP:CBASE + i % K, the
gateway's answer GW_MEDIA_IP:GBASE + i % K; the called number is 4000000 + i (the node keeps it on leg B,
which is how the gateway side is matched to the caller side). Once every call is up, PAIRS_OUT gets one line per
call, "A_IP A_PORT B_IP B_PORT": the node's relay address in the 200 the caller got (where the caller sends)
and in the INVITE the gateway got (where the gateway sends); then "ready" is printed on stdout. The process
then stays, answering, until it gets SIGTERM.

MODE srtp (default rtp): the caller (on a trunk with encryption = "required") offers RTP/SAVP with one a=crypto
line (AES_CM_128_HMAC_SHA1_80, a fresh key per call) and wants RTP/SAVP with a key in the 200; the gateway (a
trunk with encryption = "none") must get plain RTP/AVP without a=crypto, and answers plain. Each PAIRS_OUT line
then also carries "CALLER_KEY RELAY_KEY" (the caller's base64 inline key, the one the node answered).

Per call: INVITE (caller) -> node -> INVITE (gateway) -> 200 with SDP -> ACK; 200 -> caller -> ACK. At most
WINDOW (env MB_WINDOW, default 100) calls are being set up at once; an INVITE without a final answer is sent
again every second (UDP), a call without one after 8 s fails the setup."""
import base64
import os
import select
import signal
import socket
import sys
import time

WINDOW = int(os.environ.get("MB_WINDOW", "100"))
COMPACT = {"i": "call-id", "v": "via", "f": "from", "t": "to", "m": "contact", "l": "content-length",
           "c": "content-type"}


def parse(data):
    """(first line, {lower-case header: [values]}, body) of a SIP message."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers.setdefault(COMPACT.get(name, name), []).append(value.strip())
    return lines[0], headers, body


def one(headers, name):
    return headers.get(name, [""])[0]


def sdp_media(body):
    ip = port = None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("c=IN IP4 "):
            ip = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return ip, port


def sdp(ip, port, sess, key=None):
    proto, crypto = "RTP/AVP", ""
    if key:
        proto, crypto = "RTP/SAVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
    return (f"v=0\r\no=bench {sess} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} {proto} 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n{crypto}").encode()


def sdp_crypto(body):
    """(profile of m=audio, inline key of its AES_CM_128_HMAC_SHA1_80 a=crypto line or None)."""
    proto, key = None, None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("m=audio "):
            parts = line.split()
            proto = parts[2] if len(parts) > 2 else None
        elif line.startswith("a=crypto:") and " AES_CM_128_HMAC_SHA1_80 inline:" in line and key is None:
            key = line.split("inline:")[1].split("|")[0].split()[0]
    return proto, key


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def response(req_headers, status, extra="", body=b"", to_tag=None):
    to = one(req_headers, "to")
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for v in req_headers.get("via", [])]
    lines += [f"From: {one(req_headers, 'from')}", f"To: {to}", f"Call-ID: {one(req_headers, 'call-id')}",
              f"CSeq: {one(req_headers, 'cseq')}"]
    if extra:
        lines.append(extra)
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Bench:
    def __init__(self, argv):
        (node, caller, gateway, calls, k, self.cip, cbase, self.gip, gbase, self.out) = argv[:10]
        self.srtp = len(argv) > 10 and argv[10] == "srtp"
        self.keys = {}          # call -> (the caller's key, the node's key) with SRTP
        self.node, self.caller, self.gateway = addr(node), addr(caller), addr(gateway)
        self.calls, self.k, self.cbase, self.gbase = int(calls), int(k), int(cbase), int(gbase)
        self.csock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s, a in ((self.csock, self.caller), (self.gsock, self.gateway)):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind(a)
            s.setblocking(False)
        self.run = os.urandom(3).hex()
        self.a_side = {}        # call -> (ip, port) from the 200 the caller got
        self.b_side = {}        # call -> (ip, port) from the INVITE the gateway got
        self.invites = {}       # call -> (bytes, last sent, first sent) until its final answer
        self.answered = {}      # leg-B Call-ID -> the 200 sent (sent again on a retransmitted INVITE)
        self.failed = []

    def invite(self, i):
        if self.srtp and i not in self.keys:
            self.keys[i] = (base64.b64encode(os.urandom(30)).decode(), None)
        body = sdp(self.cip, self.cbase + i % self.k, i, self.keys[i][0] if self.srtp else None)
        ch, cp = self.caller
        nh, np_ = self.node
        msg = (f"INVITE sip:{4000000 + i}@{nh}:{np_} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {ch}:{cp};branch=z9hG4bK-{self.run}-{i}\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: <sip:pbx@{ch}>;tag=c{i}\r\n"
               f"To: <sip:{4000000 + i}@{nh}>\r\n"
               f"Call-ID: mbench-{self.run}-{i}@{ch}\r\n"
               f"CSeq: 1 INVITE\r\n"
               f"Contact: <sip:pbx@{ch}:{cp}>\r\n"
               f"Content-Type: application/sdp\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        return msg

    def call_of(self, call_id):
        # mbench-<run>-<i>@host
        try:
            run, i = call_id.split("@")[0].split("-")[1:3]
            return int(i) if run == self.run else None
        except (ValueError, IndexError):
            return None

    def on_caller(self, data):
        first, h, body = parse(data)
        if not first.startswith("SIP/2.0 "):
            if first.startswith("BYE ") or first.startswith("OPTIONS "):
                self.csock.sendto(response(h, "200 OK"), self.node)
            return
        status = int(first.split()[1])
        cseq = one(h, "cseq")
        if not cseq.endswith("INVITE") or status < 200:
            return
        i = self.call_of(one(h, "call-id"))
        if i is None:
            return
        ch, cp = self.caller
        nh, np_ = self.node
        if status >= 300:
            # a failure is acknowledged inside the INVITE transaction: its branch and Request-URI
            ack = (f"ACK sip:{4000000 + i}@{nh}:{np_} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {ch}:{cp};branch=z9hG4bK-{self.run}-{i}\r\n"
                   f"Max-Forwards: 70\r\nFrom: {one(h, 'from')}\r\nTo: {one(h, 'to')}\r\n"
                   f"Call-ID: {one(h, 'call-id')}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
            self.csock.sendto(ack, self.node)
            if i in self.invites:
                del self.invites[i]
                self.failed.append((i, first))
            return
        # a 2xx is acknowledged end to end: to its Contact, in a transaction of its own
        contact = one(h, "contact").split("<")[-1].split(">")[0] or f"sip:{nh}:{np_}"
        ack = (f"ACK {contact} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {ch}:{cp};branch=z9hG4bK-{self.run}-{i}-ack\r\n"
               f"Max-Forwards: 70\r\nFrom: {one(h, 'from')}\r\nTo: {one(h, 'to')}\r\n"
               f"Call-ID: {one(h, 'call-id')}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
        self.csock.sendto(ack, self.node)
        if i in self.invites:
            del self.invites[i]
            if self.srtp:
                proto, key = sdp_crypto(body)
                if proto != "RTP/SAVP" or key is None:
                    self.failed.append((i, f"the node answered {proto} without an AES_CM_128_HMAC_SHA1_80 key"))
                    return
                self.keys[i] = (self.keys[i][0], key)
            self.a_side[i] = sdp_media(body)

    def on_gateway(self, data):
        first, h, body = parse(data)
        if first.startswith("SIP/2.0 "):
            return
        method = first.split()[0]
        if method == "INVITE":
            cid = one(h, "call-id")
            if cid in self.answered:
                self.gsock.sendto(self.answered[cid], self.node_of(h))
                return
            try:
                i = int(first.split()[1].split("sip:")[1].split("@")[0]) - 4000000
            except (ValueError, IndexError):
                self.gsock.sendto(response(h, "404 Not Found", to_tag="gw"), self.node_of(h))
                return
            if not 0 <= i < self.calls:
                self.gsock.sendto(response(h, "404 Not Found", to_tag="gw"), self.node_of(h))
                return
            if self.srtp and sdp_crypto(body) != ("RTP/AVP", None):
                self.failed.append((i, f"the gateway got {sdp_crypto(body)}, not plain RTP/AVP"))
            self.b_side[i] = sdp_media(body)
            gh, gp = self.gateway
            ok = response(h, "200 OK", extra=f"Contact: <sip:gw@{gh}:{gp}>",
                          body=sdp(self.gip, self.gbase + i % self.k, i), to_tag=f"g{i}")
            self.answered[cid] = ok
            self.gsock.sendto(ok, self.node_of(h))
        elif method in ("OPTIONS", "BYE", "CANCEL", "UPDATE"):
            self.gsock.sendto(response(h, "200 OK", to_tag="gw"), self.node_of(h))
        # ACK: nothing to do

    def node_of(self, h):
        """Where a request's response goes: its top Via's sent-by (received/rport when present)."""
        via = one(h, "via")
        try:
            sent_by = via.split()[1].split(";")[0]
            host, _, port = sent_by.partition(":")
            params = dict(p.partition("=")[::2] for p in via.split(";")[1:])
            host = params.get("received", host)
            port = int(params.get("rport") or port or 5060)
            return host, port
        except (IndexError, ValueError):
            return self.node

    def pump(self, timeout):
        r, _, _ = select.select([self.csock, self.gsock], [], [], timeout)
        for s in r:
            for _ in range(256):
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    break
                (self.on_caller if s is self.csock else self.on_gateway)(data)

    def setup(self):
        nxt = 0
        t0 = time.monotonic()
        while len(self.a_side) + len(self.failed) < self.calls:
            now = time.monotonic()
            while nxt < self.calls and len(self.invites) < WINDOW:
                m = self.invite(nxt)
                self.invites[nxt] = (m, now, now)
                self.csock.sendto(m, self.node)
                nxt += 1
            for i, (m, last, first) in list(self.invites.items()):
                if now - first > 8:
                    del self.invites[i]
                    self.failed.append((i, "no final answer in 8 s"))
                elif now - last > 1:
                    self.invites[i] = (m, now, first)
                    self.csock.sendto(m, self.node)
            self.pump(0.05)
        missing = [i for i in self.a_side if i not in self.b_side or None in self.a_side[i] + self.b_side[i]]
        took = time.monotonic() - t0
        if self.failed or missing:
            print(f"sipcalls: {len(self.failed)} calls failed (first: {self.failed[:3]}), "
                  f"{len(missing)} without both relay addresses", file=sys.stderr)
            return False
        with open(self.out, "w") as f:
            for i in range(self.calls):
                keys = " %s %s" % self.keys[i] if self.srtp else ""
                f.write("%s %d %s %d%s\n" % (self.a_side[i] + self.b_side[i] + (keys,)))
        print(f"sipcalls: {self.calls} calls up in {took:.1f} s", file=sys.stderr)
        return True


def main():
    b = Bench(sys.argv[1:12])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ok = b.setup()
    print("ready" if ok else "failed", flush=True)
    if not ok:
        sys.exit(1)
    # keep answering (OPTIONS probes, retransmitted 200s, BYEs) until SIGTERM
    while not stop:
        b.pump(0.2)


if __name__ == "__main__":
    main()
