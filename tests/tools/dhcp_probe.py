#!/usr/bin/env python3
"""Send one DHCP packet (raw bytes from a file) from 0.0.0.0:68 as a
broadcast on INTERFACE and print every reply seen within SECONDS, one JSON
object per line: server id, yiaddr, siaddr, file, message type, host name.
Used by tests/dhcp.rs inside a test network namespace only.
usage: dhcp_probe.py INTERFACE PACKET_FILE SECONDS [garbage-first]"""
import json, select, socket, sys, time

iface, packet, secs = sys.argv[1], open(sys.argv[2], "rb").read(), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.bind(("0.0.0.0", 68))
if len(sys.argv) > 4:
    s.sendto(b"\x01garbage that is not DHCP", ("255.255.255.255", 67))
sent = time.perf_counter()
s.sendto(packet, ("255.255.255.255", 67))
xid = packet[4:8]
end = time.time() + secs
while time.time() < end:
    r, _, _ = select.select([s], [], [], max(0.0, end - time.time()))
    if not r:
        break
    data, src = s.recvfrom(1500)
    took_ms = (time.perf_counter() - sent) * 1000
    if len(data) < 240 or data[0] != 2 or data[4:8] != xid:
        continue
    opts, i, out = data[240:], 0, {}
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        code, ln = opts[i], opts[i + 1]
        out[code] = opts[i + 2:i + 2 + ln]
        i += 2 + ln
    print(json.dumps({
        "server": ".".join(map(str, out.get(54, b"\0\0\0\0"))),
        "yiaddr": ".".join(map(str, data[16:20])),
        "siaddr": ".".join(map(str, data[20:24])),
        "file": data[108:236].split(b"\0")[0].decode(errors="replace"),
        "type": out.get(53, b"\0")[0],
        "class": out.get(60, b"").decode(errors="replace"),
        "hostname": out.get(12, b"").decode(errors="replace"),
        "ms": round(took_ms, 3),
    }), flush=True)
