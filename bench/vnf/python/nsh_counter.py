#!/usr/bin/env python3
"""A small NSH-aware VNF written without NHAM's libraries: it shows that an
arbitrary, unmodified third-party process is protected like the samples.

It reads every frame on $NHAM_IFACE through an AF_PACKET socket bound to
ETH_P_ALL with Linux's default receive buffer (as such scripts are usually
written), keeps the NSH ones (EtherType 0x894F), counts them, their inner
frames' bytes and a running CRC-32 of those inner frames in order (its
state), and sends each one
back to the SFF with the MAC addresses swapped and the Service Index
decremented by one (RFC 8300, section 2.3: "Service Index (SI): Identifies
the location of the packet within a Service Function Path ... It is
decremented by Service Functions"). Everything else it ignores.

SIGUSR1 writes the state as JSON to the path given as the first argument
(a temporary file renamed into place). It prints "ready" once listening.
"""
import json
import os
import signal
import socket
import sys
import zlib

ETH_P_NSH = 0x894F
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4

state_path = sys.argv[1]
iface = os.environ["NHAM_IFACE"]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
sock.bind((iface, ETH_P_ALL))
state = {"packets": 0, "bytes": 0, "crc": 0}


def dump(_signum, _frame):
    tmp = state_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.rename(tmp, state_path)


signal.signal(signal.SIGUSR1, dump)
print("ready", flush=True)
while True:
    frame, addr = sock.recvfrom(65536)
    if addr[2] == PACKET_OUTGOING or len(frame) < 14 + 8:
        continue
    if frame[12:14] != b"\x89\x4f":
        continue
    si = frame[14 + 7]
    if si == 0:
        continue
    # NSH Length: the low 6 bits of the base header's second byte, in
    # 4-byte words; what follows is the inner Ethernet frame.
    nsh_len = 4 * (frame[15] & 0x3F)
    state["packets"] += 1
    state["bytes"] += len(frame) - 14 - nsh_len
    state["crc"] = zlib.crc32(frame[14 + nsh_len:], state["crc"])
    out = bytearray(frame)
    out[0:6], out[6:12] = frame[6:12], frame[0:6]
    out[14 + 7] = si - 1
    sock.send(bytes(out))
