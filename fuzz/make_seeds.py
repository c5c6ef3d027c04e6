#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the recorded shmipc-go
fixtures in core/tests/fixtures. Rerun after changing a target's input format; the output is
committed so that CI needs no Python.

- frame_decoder, handshake: the socket bytes of a real Go V3 memfd session, each direction as
  one stream and frame by frame.
- session_elements: the queue elements of a real Go session (stream 2, its eight offsets),
  pushed and drained, plus correct sends of Go's message sizes.
- chain_walk: Go's first buffer list cut down to the seven slices that fit in 64 KiB: Go's
  manager, list and slice headers byte for byte, with the counts, the used length and the
  list's head, tail and last link set for seven slices.
"""
import gzip
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "core", "tests", "fixtures")
SEEDS = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def socket_streams():
    """The Go client's and server's bytes, as lists of frames."""
    frames = {"C->S": [], "S->C": []}
    with open(os.path.join(FIXTURES, "go-memfd-v3-client.txt")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            direction, rest = line.split(None, 1)
            if direction not in frames or rest.startswith("sendmsg"):
                continue
            hexes = []
            for word in rest.split():
                if all(c in "0123456789abcdef" for c in word):
                    hexes.append(word)
                else:
                    break
            frames[direction].append(bytes.fromhex("".join(hexes)))
    return frames


def main():
    frames = socket_streams()
    client, server = frames["C->S"], frames["S->C"]
    assert client and server, "no frames parsed"
    # frame_decoder: [limit selector, chunk - 1, spare flag] + bytes
    for name, stream in (("go-client", client), ("go-server", server)):
        joined = b"".join(stream)
        write("frame_decoder", name + "-whole", bytes([3, 255, 0]) + joined)
        write("frame_decoder", name + "-bytewise", bytes([3, 0, 1]) + joined)
        write("frame_decoder", name + "-limit16", bytes([0, 6, 0]) + joined)
    for i, frame in enumerate(client + server):
        write("frame_decoder", "go-frame-%02d" % i, bytes([2, 255, 0]) + frame)
    # handshake: [role, wrong_at (2), queue path len, path, buffer path len, path] + peer bytes
    paths = client[1][10:]  # the ShareMemoryByMemfd payload: u16 len + path, twice
    qlen = struct.unpack(">H", paths[:2])[0]
    qpath = paths[2 : 2 + qlen]
    bpath = paths[4 + qlen :]
    ours = bytes([len(qpath)]) + qpath + bytes([len(bpath)]) + bpath
    write("handshake", "server-of-go-client", bytes([3, 0, 0, 0, 0]) + b"".join(client))
    write("handshake", "memfd-client-of-go-server", bytes([0, 0, 0]) + ours + b"".join(server))
    write("handshake", "v3-file-client-of-go-server", bytes([2, 0, 0]) + ours + b"".join(server))
    write("handshake", "v2-client", bytes([1, 0, 0]) + ours)
    # session_elements: op 1 = element (stream, offset mode 0 = raw u32, status two bytes),
    # op 4 = drain, op 0 = correct send (stream, slices - 1, lengths), op 5 = consume.
    with gzip.open(os.path.join(FIXTURES, "queue.bin.gz")) as f:
        queue = f.read()
    half = len(queue) // 2
    ops = b""
    for base in (0, half):
        head, tail = struct.unpack_from("<qq", queue, base + 4)
        for i in range(head):
            stream, offset, status = struct.unpack_from("<III", queue, base + 24 + 12 * i)
            ops += bytes([1, stream, 0]) + struct.pack("<I", offset) + bytes([status, 0])
        ops += bytes([4])
    write("session_elements", "go-queue-elements", ops)
    sends = b""
    for size in (3, 5000, 9000, 200000):
        sends += bytes([0, 2, 0]) + struct.pack("<H", size % 1025)
    write("session_elements", "go-message-sizes", sends + bytes([4, 5, 0, 5, 0, 4]))
    # chain_walk: [mode 0, image length / 8 (u16)] + image
    with gzip.open(os.path.join(FIXTURES, "buffer.bin.gz")) as f:
        buf = f.read(8 + 36 + 7 * 8192)
    count, stride = 7, 8192
    manager = struct.pack("<HHI", 1, 0, 36 + count * stride)
    header = bytearray(buf[8:44])
    struct.pack_into("<IIII", header, 0, count, count, 0, (count - 1) * stride)
    slices = bytearray(buf[44:])
    struct.pack_into("<I", slices, (count - 1) * stride + 16, 0)  # the last has no next
    image = manager + bytes(header) + bytes(slices)
    write("chain_walk", "go-list-0", bytes([0]) + struct.pack("<H", (len(image) + 7) // 8) + image)
    walks = bytes([1, 0, 0, 1, 0]) + bytes([1, 0, 2, 0]) * 4
    write("chain_walk", "go-list-0-walks", bytes([0]) + struct.pack("<H", (len(image) + 7) // 8) + image + walks)


if __name__ == "__main__":
    main()
