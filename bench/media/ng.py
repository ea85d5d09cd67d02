#!/usr/bin/env python3
"""bench/media/ng.py: sets up relayed G.711 calls on rtpengine through its ng control protocol (bencode
over UDP: a cookie, a space, a bencoded dictionary; the reply echoes the cookie).

    ng.py NG_ADDR CALLS K CALLER_IP CBASE GW_IP GBASE > pairs.txt

Call i: the caller's SDP (offer) announces CALLER_IP:CBASE + i % K, the gateway's (answer) GW_IP:GBASE + i % K.
Prints one line per call, "A_IP A_PORT B_IP B_PORT": where the caller sends (the answer rtpengine returns
to the caller) and where the gateway sends (the offer rtpengine returns to the gateway)."""
import os
import socket
import sys


def encode(v):
    if isinstance(v, int):
        return b"i" + str(v).encode() + b"e"
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return str(len(v)).encode() + b":" + v
    if isinstance(v, (list, tuple)):
        return b"l" + b"".join(encode(x) for x in v) + b"e"
    if isinstance(v, dict):
        keys = sorted(k.encode() if isinstance(k, str) else k for k in v)
        items = {(k.encode() if isinstance(k, str) else k): x for k, x in v.items()}
        return b"d" + b"".join(encode(k) + encode(items[k]) for k in keys) + b"e"
    raise TypeError(type(v))


def decode(b, at=0):
    """Returns (value, next offset)."""
    lead = b[at:at + 1]
    if lead == b"i":
        end = b.index(b"e", at)
        return int(b[at + 1:end]), end + 1
    if lead in (b"l", b"d"):
        at += 1
        items = []
        while b[at:at + 1] != b"e":
            x, at = decode(b, at)
            items.append(x)
        if lead == b"l":
            return items, at + 1
        return {items[j].decode(): items[j + 1] for j in range(0, len(items), 2)}, at + 1
    colon = b.index(b":", at)
    size = int(b[at:colon])
    return b[colon + 1:colon + 1 + size], colon + 1 + size


class Ng:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2)

    def call(self, msg):
        cookie = os.urandom(6).hex().encode()
        data = cookie + b" " + encode(msg)
        for _ in range(5):
            self.sock.sendto(data, self.addr)
            try:
                while True:
                    reply, _ = self.sock.recvfrom(65536)
                    head, _, body = reply.partition(b" ")
                    if head == cookie:
                        return decode(body)[0]
            except socket.timeout:
                continue
        sys.exit(f"ng: no answer from {self.addr} to {msg.get('command')}")


def sdp(ip, port, version):
    return (f"v=0\r\no=bench {version} {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n")


def media_of(body):
    """(c= address, m=audio port) of an SDP body."""
    ip = port = None
    for line in body.decode().splitlines():
        if line.startswith("c=IN IP4 "):
            ip = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    if ip is None or port is None:
        sys.exit(f"ng: no address in SDP {body!r}")
    return ip, port


def main():
    ng_addr, calls, k, cip, cbase, gip, gbase = sys.argv[1:8]
    calls, k, cbase, gbase = int(calls), int(k), int(cbase), int(gbase)
    ng = Ng(ng_addr)
    if ng.call({"command": "ping"}).get("result") != b"pong":
        sys.exit("ng: rtpengine did not answer ping")
    run = os.urandom(3).hex()
    for i in range(calls):
        cid = f"mbench-{run}-{i}"
        offer = ng.call({"command": "offer", "call-id": cid, "from-tag": f"c{i}",
                         "sdp": sdp(cip, cbase + i % k, i), "replace": ["origin", "session-connection"],
                         "ICE": "remove"})
        answer = ng.call({"command": "answer", "call-id": cid, "from-tag": f"c{i}", "to-tag": f"g{i}",
                          "sdp": sdp(gip, gbase + i % k, i), "replace": ["origin", "session-connection"],
                          "ICE": "remove"})
        for what, r in (("offer", offer), ("answer", answer)):
            if r.get("result") != b"ok":
                sys.exit(f"ng: {what} of call {i}: {r}")
        a_ip, a_port = media_of(answer["sdp"])   # the caller sends here
        b_ip, b_port = media_of(offer["sdp"])    # the gateway sends here
        print(a_ip, a_port, b_ip, b_port)


if __name__ == "__main__":
    main()
