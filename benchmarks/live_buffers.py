"""What a train step keeps alive at its memory peak, from XLA's own buffer assignment (CPU).

    python benchmarks/live_buffers.py                                  # CNN+MLP, bfloat16
    python benchmarks/live_buffers.py --model mlp+mlp --compute-dtype float32 --top 8

XLA's `memory_analysis()` gives one number, the size of the step's temporary allocation;
its memory-usage report lists the largest buffers, not which of them are alive together.
This compiles the step (`train_throughput.build`, springs-5 shapes) with the HLO dumped as
text, reads the scheduled entry computation and the offsets XLA gave each value of the
temporary allocation, and takes a buffer as alive from the instruction that defines it to
its last use (followed through bitcasts, tuples, get-tuple-element and while loops). It
prints the instant with the most bytes alive, what is alive then (size, live range, shape,
the JAX operation that made it: `transpose(jvp(...))` marks the backward pass), the live
bytes over the schedule, and the values placed highest in the allocation.

Buffers under 1 MiB and those inside loop bodies (the decoder's scan) are left out of the
sums, so the peak found is a lower bound of XLA's temporaries; the highest-placed values
show whether the true peak falls inside a loop. The dump format is XLA's and may change
between versions.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hlo import parse_hlo  # noqa: E402

MIB = 2 ** 20
# Instructions whose result is (part of) an operand's buffer: uses of them are uses of it.
ALIASING = {"bitcast", "get-tuple-element", "tuple", "while", "conditional"}


def _entry(hlo_text: str):
    """The scheduled entry computation: names in order, operands, opcodes, source ops."""
    instructions, computations = parse_hlo(hlo_text)
    order = computations[re.search(r"^ENTRY %([\w.\-]+) ", hlo_text, re.M).group(1)]
    operands = {n: set(instructions[n]["operands"]) for n in order}
    opcode = {n: instructions[n]["opcode"] for n in order}
    source = {n: instructions[n]["op_name"] for n in order}
    return order, operands, opcode, source


def _temporaries(assignment_text: str, min_bytes: int):
    """(name, size, offset, shape) of the values of the preallocated temporary allocation."""
    lines = assignment_text.splitlines()
    start = next(i for i, line in enumerate(lines) if "preallocated-temp" in line)
    size = int(re.search(r"size (\d+)", lines[start]).group(1))
    values = []
    for line in lines[start + 1:]:
        m = re.match(r"\s+value: <\d+ ([\w.\-]+)(?:\{[^}]*\})? @0> "
                     r"\(size=(\d+),offset=(\d+)\): (\S+)", line)
        if not m:
            break
        if int(m.group(2)) >= min_bytes:
            values.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)))
    return size, values


def live_ranges(hlo_text: str, assignment_text: str, min_bytes: int = MIB) -> dict:
    """Each entry-level temporary's [first, last] instruction index, and the schedule."""
    order, operands, opcode, source = _entry(hlo_text)
    position = {name: i for i, name in enumerate(order)}
    users = collections.defaultdict(set)
    for name, used in operands.items():
        for operand in used:
            if operand in position:
                users[operand].add(name)

    def last_use(name, seen):
        seen.add(name)
        end = position[name]
        for user in users[name]:
            if opcode[user] in ALIASING and user not in seen:
                end = max(end, last_use(user, seen))
            else:
                end = max(end, position[user])
        return end

    size, values = _temporaries(assignment_text, min_bytes)
    buffers = [dict(name=n, bytes=b, offset=o, shape=s, first=position[n],
                    last=last_use(n, set()), op=opcode[n], source=source[n])
               for n, b, o, s in values if n in position]
    return dict(order=order, opcode=opcode, source=source, buffers=buffers,
                temp_bytes=size, highest=sorted(values, key=lambda v: -(v[1] + v[2])))


def report(r: dict, top: int) -> None:
    order, buffers = r["order"], r["buffers"]
    alive = [0] * len(order)
    for b in buffers:
        for t in range(b["first"], b["last"] + 1):
            alive[t] += b["bytes"]
    peak = max(range(len(order)), key=alive.__getitem__)
    print(f"temporary allocation {r['temp_bytes'] / MIB:.0f} MiB; entry-level buffers of 1 MiB "
          f"or more alive together: at most {alive[peak] / MIB:.0f} MiB, at instruction {peak} "
          f"of {len(order)} ({order[peak]}: {r['source'][order[peak]][-90:]})")
    print("alive then (MiB, live range, shape, opcode, source op):")
    here = sorted((b for b in buffers if b["first"] <= peak <= b["last"]), key=lambda b: -b["bytes"])
    for b in here[:top]:
        print(f"  {b['bytes'] / MIB:7.1f} [{b['first']}-{b['last']}] {b['shape']:30s} "
              f"{b['op']:12s} {b['source'][-80:] or b['name']}")
    step = max(1, len(order) // 40)
    print("MiB alive over the schedule (max of each 1/40):",
          " ".join(f"{max(alive[t:t + step]) / MIB:.0f}" for t in range(0, len(order), step)))
    print("highest-placed values (end of their offset, MiB; loop bodies included):")
    for name, size, offset, shape in r["highest"][:top]:
        print(f"  {(offset + size) / MIB:7.1f} {size / MIB:7.1f} {shape:30s} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn+mlp")
    parser.add_argument("--compute-dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as dump:
        # Before jax is imported (train_throughput.build imports it).
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_dump_to={dump} --xla_dump_hlo_as_text")
        from train_throughput import build
        step, state, split, indices, key = build(args.model, args.compute_dtype, args.batch,
                                                 args.hidden, 5)
        step.lower(state, split, indices, key).compile()
        prefix = glob.glob(os.path.join(dump, "*jit_train_step.cpu_after_optimizations.txt"))[0]
        with open(prefix) as f:
            hlo = f.read()
        with open(prefix.replace(".txt", "-buffer-assignment.txt")) as f:
            assignment = f.read()
    print(f"{args.model} {args.compute_dtype} B={args.batch} H={args.hidden}")
    report(live_ranges(hlo, assignment), args.top)


if __name__ == "__main__":
    main()
