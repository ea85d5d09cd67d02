#!/usr/bin/env python3
"""bench/media/ng.py: sets up relayed G.711 calls on rtpengine through its ng control protocol (bencode
over UDP: a cookie, a space, a bencoded dictionary; the reply echoes the cookie).

    ng.py NG_ADDR CALLS K CALLER_IP CBASE GW_IP GBASE [MODE] > pairs.txt

Call i: the caller's SDP (offer) announces CALLER_IP:CBASE + i % K, the gateway's (answer) GW_IP:GBASE + i % K.
Prints one line per call, "A_IP A_PORT B_IP B_PORT": where the caller sends (the answer rtpengine returns
to the caller) and where the gateway sends (the offer rtpengine returns to the gateway).

MODE srtp (default rtp): the caller offers RTP/SAVP with one a=crypto line (AES_CM_128_HMAC_SHA1_80, a fresh
key per call) and the offer asks rtpengine for "transport-protocol": "RTP/AVP" towards the gateway, which answers
plain RTP; rtpengine answers the caller RTP/SAVP with a key of its own. Each line then also carries
"CALLER_KEY RELAY_KEY" (the base64 inline key the caller offered, the one rtpengine answered)."""
import base64
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


def sdp(ip, port, version, key=None):
    proto, crypto = "RTP/AVP", ""
    if key:
        proto, crypto = "RTP/SAVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
    return (f"v=0\r\no=bench {version} {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} {proto} 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n{crypto}")


def new_key():
    """An SDES inline key: 16-byte master key || 14-byte salt, base64."""
    return base64.b64encode(os.urandom(30)).decode()


def crypto_key(body, want_proto):
    """The inline key of the AES_CM_128_HMAC_SHA1_80 a=crypto line of an SDP whose audio is `want_proto`."""
    text = body.decode()
    if f" {want_proto} " not in text:
        sys.exit(f"ng: expected {want_proto} in {text!r}")
    for line in text.splitlines():
        if line.startswith("a=crypto:") and " AES_CM_128_HMAC_SHA1_80 inline:" in line:
            return line.split("inline:")[1].split("|")[0].split()[0]
    sys.exit(f"ng: no AES_CM_128_HMAC_SHA1_80 a=crypto in {text!r}")


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
    srtp = len(sys.argv) > 8 and sys.argv[8] == "srtp"
    calls, k, cbase, gbase = int(calls), int(k), int(cbase), int(gbase)
    ng = Ng(ng_addr)
    if ng.call({"command": "ping"}).get("result") != b"pong":
        sys.exit("ng: rtpengine did not answer ping")
    run = os.urandom(3).hex()
    for i in range(calls):
        cid = f"mbench-{run}-{i}"
        key = new_key() if srtp else None
        offer_msg = {"command": "offer", "call-id": cid, "from-tag": f"c{i}",
                     "sdp": sdp(cip, cbase + i % k, i, key), "replace": ["origin", "session-connection"],
                     "ICE": "remove"}
        if srtp:
            offer_msg["transport-protocol"] = "RTP/AVP"   # plain RTP towards the gateway
        offer = ng.call(offer_msg)
        answer = ng.call({"command": "answer", "call-id": cid, "from-tag": f"c{i}", "to-tag": f"g{i}",
                          "sdp": sdp(gip, gbase + i % k, i), "replace": ["origin", "session-connection"],
                          "ICE": "remove"})
        for what, r in (("offer", offer), ("answer", answer)):
            if r.get("result") != b"ok":
                sys.exit(f"ng: {what} of call {i}: {r}")
        a_ip, a_port = media_of(answer["sdp"])   # the caller sends here
        b_ip, b_port = media_of(offer["sdp"])    # the gateway sends here
        if srtp:
            if b" RTP/AVP " not in offer["sdp"] or b"a=crypto" in offer["sdp"]:
                sys.exit(f"ng: the offer towards the gateway is not plain RTP/AVP: {offer['sdp']!r}")
            print(a_ip, a_port, b_ip, b_port, key, crypto_key(answer["sdp"], "RTP/SAVP"))
        else:
            print(a_ip, a_port, b_ip, b_port)


if __name__ == "__main__":
    main()
