#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into corpus/<target>/: small,
valid inputs that reach deep into each decoder. Deterministic; run it again
after changing it (crash reproducers added by hand are kept: only files named
seed-* are rewritten).

    python3 fuzz/gen_corpus.py
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


# --- protobuf encoding (just what the HWP messages need) -------------------

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


def field_varint(num, value):
    return varint(num << 3) + varint(value)


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint((num << 3) | 2) + varint(len(data)) + data


def msg(*fields):
    return b"".join(fields)


def grpc_frame(message):
    return b"\x00" + struct.pack(">I", len(message)) + message


def agent_message(kind, body):
    # AgentMessage oneof: hello 1, heartbeat 2, started 3, rejected 4,
    # log 5, result 6, drain 7.
    return field_bytes(kind, body)


def log_entry(job, data, offset, stream=0, attempt=1, has_offset=True, raw=True):
    return msg(
        field_bytes(1, job),
        field_varint(3, attempt),
        field_varint(4, stream),
        field_varint(5, offset),
        field_varint(6, 1_700_000_000_000),
        field_bytes(7, data) if raw else field_bytes(2, data),
        field_varint(8, 1 if has_offset else 0),
    )


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def job_result(job, attempt, outcome, code, out=b"", err=b""):
    summary = lambda d: msg(field_varint(1, len(d)), field_varint(2, crc32c(d)))
    return msg(
        field_bytes(1, job),
        field_varint(2, code),
        field_varint(3, attempt),
        field_varint(4, outcome),
        field_bytes(7, summary(out)),
        field_bytes(8, summary(err)),
    )


def spec_ext(env=None, labels=(), timeout=0, grace=0, cpu=0, mem=0, pull=0):
    fields = []
    for k, v in (env or {}).items():
        fields.append(field_bytes(1, msg(field_bytes(1, k), field_bytes(2, v))))
    fields.append(field_bytes(2, "/tmp"))
    fields.append(field_varint(3, timeout))
    for l in labels:
        fields.append(field_bytes(4, l))
    fields.append(field_varint(5, 3))
    fields.append(field_varint(6, 2))
    fields.append(field_varint(7, grace))
    fields.append(field_varint(8, cpu))
    fields.append(field_varint(9, mem))
    fields.append(field_varint(10, pull))
    return msg(*fields)


def assign_job(job, command, image="", spec=None):
    fields = [field_bytes(1, job), field_bytes(2, "seed")]
    if image:
        fields.append(field_bytes(3, image))
    fields += [field_bytes(4, a) for a in command]
    if spec is not None:
        fields.append(field_bytes(5, spec))
    return msg(*fields)


# --- targets ----------------------------------------------------------------

def submit_json():
    base = {"command": ["sh", "-c", "echo hi"]}
    seeds = [
        base,
        {"id": "build-42", "name": "build", "command": ["make", "-j4"],
         "env": {"CC": "clang", "A": "1"}, "working_dir": "/src",
         "timeout_ms": 60000, "labels": ["linux", "x86_64"], "priority": 5,
         "max_retries": 2, "kill_grace_ms": 2000},
        {"command": ["true"], "image": "busybox:1.36", "cpu_millicores": 500,
         "memory_bytes": 67108864, "pull_policy": "never"},
        {"command": ["true"], "kill_grace_ms": 0},
        {"command": ["true"], "timeout_ms": 0},
        {"command": ["a\u0000b"]},
        {"command": ["true"], "env": {"A=B": "x"}},
        {"command": ["true"], "labels": ["b", "a", "b"]},
        {"command": ["/usr/bin/" + "x" * 300]},
        {"command": ["true"], "image": ""},
        {"command": ["true"], "memory_bytes": 1024},
        {"jobs": [base, {"id": "two", "command": ["false"]}]},
    ]
    return [json.dumps(s).encode() for s in seeds] + [
        b'{"command":["true"],"bogus":1}',
        b'{"command":"true"}',
        b"[1,2]",
    ]


def agent_message_seeds():
    # Byte 0: the call (0 Attach, 1 StreamLogs, 2 AssignJob, 3
    # RegisterWorker, 4 CancelJob); byte 1: where the body is split.
    out = []
    session = [
        agent_message(3, msg(field_bytes(1, "j"), field_varint(2, 1))),
        agent_message(5, log_entry("j", b"hello\n", 0)),
        agent_message(5, log_entry("j", b"hello\nworld\n", 0)),
        agent_message(5, log_entry("j", b"oops\n", 0, stream=1)),
        agent_message(2, msg(field_varint(1, 1), field_bytes(2, msg(field_bytes(1, "j"), field_varint(2, 1))))),
        agent_message(6, job_result("j", 1, 1, 0, b"hello\nworld\n", b"oops\n")),
    ]
    out.append(b"\x00\x03" + b"".join(grpc_frame(m) for m in session))
    out.append(b"\x00\x00" + b"".join(grpc_frame(m) for m in [
        agent_message(5, log_entry("j", b"late", 100)),
        agent_message(4, msg(field_bytes(1, "j"), field_varint(2, 1), field_bytes(3, "full"))),
        agent_message(7, field_bytes(1, "bye")),
    ]))
    out.append(b"\x00\x01" + grpc_frame(agent_message(6, job_result("j", 2, 6, 137))))
    out.append(b"\x00\x02" + grpc_frame(agent_message(1, b"")))
    out.append(b"\x01\x02" + b"".join(grpc_frame(m) for m in [
        log_entry("j", "seed text\n", 0, has_offset=False, raw=False),
        log_entry("j", b"more", 10),
    ]))
    out.append(b"\x02\x01" + grpc_frame(assign_job("k", ["echo", "hi"], spec=spec_ext(
        env={"A": "1"}, labels=["linux"], timeout=1000, grace=5))))
    out.append(b"\x02\x00" + grpc_frame(assign_job("", ["true"], image="busybox", spec=spec_ext(
        cpu=500, mem=64 << 20, pull=2))))
    out.append(b"\x02\x00" + grpc_frame(assign_job("bad", ["true"], spec=spec_ext(pull=42))))
    out.append(b"\x03\x00" + grpc_frame(msg(field_bytes(1, "w2"), field_bytes(2, "linux"), field_varint(3, 4))))
    out.append(b"\x04\x00" + grpc_frame(msg(field_bytes(1, "j"), field_bytes(2, "stop"))))
    # A message over the harness's 64 KiB limit after a good one.
    out.append(b"\x00\x05" + grpc_frame(session[0]) + b"\x00" + struct.pack(">I", 1 << 20))
    return out


def log_framing():
    out = []
    # 0: chunk ops of 5 bytes: flags (bit0 stream, 0x40 result, 0x80 far
    # offset), offset u16 LE, length, (for results: claimed /8 sizes).
    ops = lambda *o: bytes([0]) + b"".join(bytes(x) for x in o)
    out.append(ops([0, 0, 0, 10, 0], [0, 5, 0, 10, 0], [1, 0, 0, 4, 0], [0x40, 0, 0, 0, 0]))
    out.append(ops([0, 0, 0, 16, 0], [0, 16, 0, 8, 0], [1, 0, 0, 8, 0], [0x40, 0, 0, 3, 1]))
    out.append(ops([0, 20, 0, 5, 0], [0, 0, 0, 5, 0], [0x80, 1, 0, 9, 0], [0x40, 0, 0, 0, 0]))
    # 1: spool meta.json records.
    meta = {"version": 1, "job_id": "build/42 x", "attempt": 2, "base": [0, 0],
            "acked": [10, 0], "process": {"pid": 4242, "pgid": 4242,
            "start_time": 987654, "boot_id": "b"},
            "result": {"outcome": 1, "exit_code": 0, "signal": 0, "message": "",
                       "stdout": {"bytes": 12, "crc32c": 1}, "stderr": {"bytes": 0, "crc32c": 0}}}
    out.append(b"\x01" + json.dumps(meta).encode())
    meta2 = dict(meta, result=None, acked=[0, 0], job_id="j")
    out.append(b"\x01" + json.dumps(meta2).encode())
    out.append(b"\x01" + json.dumps(dict(meta, acked=[0, 0], base=[5, 0])).encode())
    out.append(b"\x01" + json.dumps(dict(meta, version=2)).encode())
    # 2: /proc/<pid>/stat lines.
    out.append(b"\x02" + b"4242 (sh) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100")
    out.append(b"\x02" + b"1 (a) b) (c) S 1 1 1")
    # 3: fit_chunk triples (persisted u64, offset u64, len/1000).
    out.append(b"\x03" + struct.pack("<QQB", 10, 4, 1) + struct.pack("<QQB", 2**64 - 1, 2**64 - 2, 255))
    # 4: log frames (kind, u32 BE length, payload), split after byte N.
    frame = lambda kind, payload: kind + struct.pack(">I", len(payload)) + payload
    log = lambda attempt, stream, offset, ts, data: frame(
        b"L", struct.pack(">IBQq", attempt, stream, offset, ts) + data)
    body = (log(1, 0, 0, 1700000000000, b"hello\n") + frame(b"K", b"")
            + log(1, 1, 0, 1700000000001, b"oops\n") + frame(b"A", struct.pack(">I", 2))
            + log(2, 0, 0, 1700000000002, b"again\n") + frame(b"X", b"store failed")
            + frame(b"E", b'{"state":"succeeded","exit_code":0,"signal":null,"reason":null}'))
    out.append(b"\x04" + bytes([7]) + body)
    out.append(b"\x04" + bytes([40]) + frame(b"Z", b"later kind") + body[:50])
    return out


def api_query():
    return [
        b"\x00state=failed&label=linux&limit=10",
        b"\x00worker=w1&name_prefix=build&cursor=42",
        b"\x00limit=0",
        b"\x00state=bogus",
        b"\x01stream=stdout&from=12",
        b"\x01stream=both&attempt=2\n10:20",
        b"\x01from=18446744073709551615:0",
        b"\x02hodei_abcdefghijkl_0123456789abcdefghijklmnopqrstuvwxyzABCD",
        b"\x02hodei_short_x",
        b"\x03timed_out",
        b"\x031.5",
        b"\x03500m",
        b"\x03if-not-present",
    ]


def mask():
    def seed(s1, s2, cuts, output):
        return (bytes([len(s1)]) + s1 + bytes([len(s2)]) + s2 + bytes(cuts) + b"\x00" + output)
    return [
        seed(b"hunter22", b"", [3, 5], b"password is hunter22, ok"),
        seed(b"s3cr3t-token", b"token", [1], b"Bearer czNjcjN0LXRva2Vu and s3cr3t-token%20"),
        seed(b"abcd", b"cdef", [2, 2, 2], b"xxabcdefxxcdefab"),
        seed(b"D]XX", b"", [4], b"D]XXXX"),
        seed(b"", b"", [7], b"no secrets here\n"),
    ]


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as fh:
            fh.write(s)


write("submit_json", submit_json())
write("agent_message", agent_message_seeds())
write("log_framing", log_framing())
write("api_query", api_query())
write("mask", mask())
