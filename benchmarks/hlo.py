"""Reading XLA's optimised HLO: products' FLOPs and thunks' bytes, executed per step.

Shared by the train-step benchmarks. `executed_work` multiplies what each instruction
does by the trip counts of the loops around it (`known_trip_count`, which XLA records
for every `lax.scan`), so a decoder scan's body counts once per step it runs, unlike
XLA's own `cost_analysis`, which counts a loop body once. `plain_product_rate` and
`elementwise_bandwidth` measure the machine's own ceilings in the same run.
"""

from __future__ import annotations

import collections
import math
import re
import time

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(pred|[fsu]\d+|bf16)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
CONTAINERS = ("while", "conditional", "call")


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every array in an HLO type (one, or several in a tuple): (dtype, dims)."""
    return [(d, tuple(int(x) for x in dims.split(",") if x))
            for d, dims in _ARRAY.findall(type_text)]


def _bytes(type_text: str) -> int:
    return sum(DTYPE_BYTES.get(d, 4) * math.prod(dims) for d, dims in _arrays(type_text))


def _split_type(rest: str) -> tuple[str, str]:
    """'f32[2]{0} add(...)...' or '(f32[2], s32[]) while(...)' -> (type, the rest)."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    type_text, _, tail = rest.partition(" ")
    return type_text, tail


def parse_hlo(text: str) -> tuple[dict, dict]:
    """HLO text -> (instructions by name, instruction names by computation)."""
    instructions, computations, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            heading = _COMPUTATION.match(line)
            if heading and line.rstrip().endswith("{"):
                current = heading.group(1)
            continue
        name = match.group(1)
        type_text, tail = _split_type(line[match.end():])
        opcode = tail.split("(", 1)[0]
        operands = tail[len(opcode) + 1:].split(")", 1)[0]
        calls = re.search(r"calls=%([\w.\-]+)", tail)
        op_name = re.search(r'op_name="([^"]*)"', tail)
        instructions[name] = {
            "name": name, "type": type_text, "opcode": opcode, "line": tail,
            "operands": re.findall(r"%([\w.\-]+)", operands),
            "calls": calls.group(1) if calls else None,
            "op_name": op_name.group(1) if op_name else ""}
        computations[current].append(name)
    return instructions, computations


def product_flops(inst: dict, instructions: dict) -> float:
    """2 x output size x contracted size of one dot or convolution."""
    out = math.prod(_arrays(inst["type"])[0][1])
    if inst["opcode"] == "dot":
        lhs = _arrays(instructions[inst["operands"][0]]["type"])[0][1]
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst["line"])
        contracted = [int(d) for d in dims.group(1).split(",") if d] if dims else []
        return 2.0 * out * math.prod(lhs[d] for d in contracted)
    rhs = _arrays(instructions[inst["operands"][1]]["type"])[0][1]
    labels = re.search(r"dim_labels=\w+_(\w+)->", inst["line"])
    out_features = rhs[labels.group(1).index("o")] if labels else rhs[-1]
    return 2.0 * out * math.prod(rhs) / out_features


_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def called_instructions(inst: dict, instructions: dict, computations: dict) -> list[dict]:
    """The instruction itself, or the instructions of the computation it calls."""
    if inst["calls"] is None:
        return [inst]
    return [instructions[n] for n in computations.get(inst["calls"], [])]


def thunk_bytes(inst: dict, instructions: dict, computations: dict) -> int:
    """Bytes read and written: operands + result, except that an in-place update of a
    stacked scan buffer moves only its slice, and a dynamic slice reads only its result."""
    operands = [_bytes(instructions[o]["type"]) for o in inst["operands"] if o in instructions]
    result = _bytes(inst["type"])
    opcodes = {i["opcode"] for i in called_instructions(inst, instructions, computations)}
    if "dynamic-update-slice" in opcodes and result in operands:
        operands.remove(result)  # the buffer is updated in place
        return 2 * sum(operands)  # the update is read and written once
    if "dynamic-slice" in opcodes:
        return 2 * result
    return sum(operands) + result


def best_call_seconds(call, repeats: int) -> float:
    """The shortest of `repeats` timed calls of `call()`, after one untimed call;
    `call` must return only when its work is done."""
    call()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def best_seconds(fn, *args, repeats: int) -> float:
    """The shortest of `repeats` timed calls of a jitted `fn`, after one untimed call."""
    import jax

    return best_call_seconds(lambda: jax.block_until_ready(fn(*args)), repeats)


def plain_product_rates(rows: int, width: int, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of one plain [rows, width] x [width, width] product, float32 and bfloat16
    (float32 accumulation): the CPU's ceiling at the model's shapes, measured in this run."""
    import jax
    import jax.numpy as jnp

    rates = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        a = jnp.ones((rows, width), dtype)
        b = jnp.ones((width, width), dtype)
        product = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        best = best_seconds(product, a, b, repeats=repeats)
        rates[jnp.dtype(dtype).name] = 2 * rows * width * width / best / 1e9
    return rates


def executed_work(text: str) -> dict[str, float]:
    """Products' FLOPs and thunks' bytes (read + written) of one run of an HLO module.

    A thunk is an instruction of the entry computation, of a loop body or of a called
    computation (a fusion, a product, a copy, ...); its bytes are counted as
    `thunk_bytes`, once per execution. Branches of a `conditional` are not counted
    (the train steps have none).
    """
    instructions, computations = parse_hlo(text)
    entry = re.search(r"^ENTRY %([\w.\-]+) ", text, re.M).group(1)
    flops = bytes_ = 0.0
    pending = [(entry, 1)]
    while pending:
        computation, times = pending.pop()
        for inst in (instructions[n] for n in computations[computation]):
            if inst["opcode"] == "while":
                trips = _TRIPS.search(inst["line"])
                body = re.search(r"body=%([\w.\-]+)", inst["line"]).group(1)
                pending.append((body, times * (int(trips.group(1)) if trips else 1)))
                continue
            if inst["opcode"] == "call":  # an outlined computation, run once per call
                pending.append((re.search(r"to_apply=%([\w.\-]+)", inst["line"]).group(1), times))
                continue
            if inst["opcode"] in ("parameter", "constant", "tuple", "get-tuple-element",
                                  "bitcast") or inst["opcode"] in CONTAINERS:
                continue
            inner = called_instructions(inst, instructions, computations)
            flops += times * sum(product_flops(i, instructions) for i in inner
                                 if i["opcode"] in ("dot", "convolution"))
            bytes_ += times * thunk_bytes(inst, instructions, computations)
    return {"product_flops": flops, "bytes": bytes_}


def elementwise_bandwidth(elements: int = 2 ** 24, repeats: int = 5) -> float:
    """GB/s of `relu(a + b)` over float32 arrays that miss the caches (2 reads, 1 write)."""
    import jax
    import jax.numpy as jnp

    a = jnp.linspace(-1.0, 1.0, elements, dtype=jnp.float32)
    b = jnp.flip(a)
    fn = jax.jit(lambda a, b: jax.nn.relu(a + b))
    return 3 * 4 * elements / best_seconds(fn, a, b, repeats=repeats) / 1e9
