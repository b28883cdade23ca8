"""A test host's DNS server: answers A questions from NAME=IP arguments, NXDOMAIN for anything else.

Usage: python3 dns_server.py LISTEN_IP NAME=IP... (UDP port 53 on LISTEN_IP only). Prints "ready" once bound.
"""
import socket
import struct
import sys

listen, records = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((listen, 53))
print("ready", flush=True)
while True:
    query, peer = sock.recvfrom(4096)
    (qid, flags, qdcount) = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    while query[pos]:
        labels.append(query[pos + 1 : pos + 1 + query[pos]].decode().lower())
        pos += 1 + query[pos]
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    question = query[12 : pos + 5]
    name, ip = ".".join(labels), records.get(".".join(labels))
    answers = b""
    if ip and qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(ip)
    rcode = 0 if name in records else 3
    header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100) | rcode, 1, 1 if answers else 0, 0, 0)
    sock.sendto(header + question + answers, peer)
