"""The train steps' largest products on this CPU: XLA (this project) against PyTorch (the original).

    bash ../shared/bench/original_nri_throughput.sh <NRI git dir>   # builds /tmp/original-nri/venv
    python benchmarks/product_rates.py                                # then this, right after
    python benchmarks/product_rates.py --torch-python none            # XLA only

The original NRI runs on PyTorch, whose CPU products are oneDNN's; this project's run
on XLA's CPU backend. How fast each library multiplies at the shapes the paper's
models spend their products on bounds what a train step can reach, so this measures
both in one run, alternating (`--rounds`), best of `--repeats` calls each:

- `[12800, 256] x [256, 256]`: the MLP decoder's message layers (128 examples x 5
  rollout blocks x 20 edges) in each of three forms: forward `x @ w`, input gradient
  `g @ w.T` and weight gradient `x.T @ g` (contracting the long row axis).
- `[46080, 1280] x [1280, 256]`: the CNN encoder's second convolution as one product
  of its windows (2560 edges x 18 frames, 5 taps x 256 channels), forward and weight
  gradient.

XLA's weight gradient is measured as written (`lax.dot_general` contracting axis 0,
which XLA compiles to a slow product) and with the operand copied transposed first,
then a plain product (the form of the bf16 steps' "layout copies" in
`profile_step.py`). Float32 and bfloat16: XLA accumulates and writes float32, as the
train steps do; PyTorch's bfloat16 product writes bfloat16 (the original trains in
float32: its bfloat16 rate is what its library could do). Both write each product over
the previous call's output (XLA: a donated buffer; PyTorch: `out=`), so that the rates
are the products' own and not the page faults of a fresh 13-60 MB output (a fresh
[46080, 256] one took as long as its product; BENCHMARKS.md, 2026-12-07). PyTorch runs
in `--torch-python`'s interpreter (by default the original's venv that
`original_nri_throughput.sh` builds) with as many threads as this machine has cores,
as that script runs the original.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hlo import best_call_seconds  # noqa: E402  (no jax at import: the torch child uses it too)

DEFAULT_TORCH_PYTHON = "/tmp/original-nri/venv/bin/python"
# name: (rows, contracted, columns, forms)
SHAPES = {"messages": (12800, 256, 256, ("forward", "input gradient", "weight gradient")),
          "conv2": (46080, 1280, 256, ("forward", "weight gradient"))}
DTYPES = ("float32", "bfloat16")


def xla_forms() -> dict:
    """The products as the train steps write them in JAX: form -> fn(x, w, g)."""
    import jax.numpy as jnp
    from jax import lax

    def transposed_first(x, g):
        # reshape-transpose-reshape: XLA writes the transposed copy instead of folding
        # the transpose into the slow product (BENCHMARKS.md, 2026-12-07).
        rows, width = x.shape
        x_t = jnp.transpose(x.reshape(rows // 128, 128, width), (2, 0, 1)).reshape(width, rows)
        return jnp.dot(x_t, g, preferred_element_type=jnp.float32)

    return {"forward": lambda x, w, g: jnp.dot(x, w, preferred_element_type=jnp.float32),
            "input gradient": lambda x, w, g: lax.dot_general(
                g, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32),
            "weight gradient": lambda x, w, g: lax.dot_general(
                x, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32),
            "weight gradient, transposed copy first": lambda x, w, g: transposed_first(x, g)}


def xla_rates(repeats: int) -> dict[str, float]:
    """GFLOP/s of every (shape, form, dtype) in XLA, keyed 'shape/form/dtype'."""
    import jax
    import jax.numpy as jnp

    rates = {}
    for name, (rows, k, n, wanted) in SHAPES.items():
        for dtype in DTYPES:
            key = jax.random.key(0)
            x = jax.random.normal(key, (rows, k)).astype(dtype)
            w = jax.random.normal(key, (k, n)).astype(dtype)
            g = jax.random.normal(key, (rows, n)).astype(dtype)
            for form, fn in xla_forms().items():
                if form.split(",")[0] not in wanted:
                    continue
                # The output is written over the previous call's (donated) buffer, whose
                # pages are mapped already: a fresh one would be faulted in on every call.
                step = jax.jit(lambda x, w, g, out, fn=fn: fn(x, w, g), donate_argnums=3,
                               keep_unused=True)
                out = [step(x, w, g, jnp.zeros((k, n) if "weight" in form else (rows, n)))]

                def call():
                    out[0] = jax.block_until_ready(step(x, w, g, out[0]))

                seconds = best_call_seconds(call, repeats)
                rates[f"{name}/{form}/{dtype}"] = 2 * rows * k * n / seconds / 1e9
    return rates


def torch_rates(repeats: int) -> dict[str, float]:
    """The same products in PyTorch (run in the original's interpreter)."""
    import torch

    torch.set_num_threads(os.cpu_count())
    forms = {"forward": lambda x, w, g, out: torch.matmul(x, w, out=out),
             "input gradient": lambda x, w, g, out: torch.matmul(g, w.t(), out=out),
             "weight gradient": lambda x, w, g, out: torch.matmul(x.t(), g, out=out)}
    rates = {}
    for name, (rows, k, n, wanted) in SHAPES.items():
        for dtype in DTYPES:
            generator = torch.Generator().manual_seed(0)
            x, w, g = (torch.randn(shape, generator=generator).to(getattr(torch, dtype))
                       for shape in ((rows, k), (k, n), (rows, n)))
            for form in wanted:
                out = torch.empty((k, n) if "weight" in form else (rows, n),
                                  dtype=getattr(torch, dtype))
                seconds = best_call_seconds(lambda: forms[form](x, w, g, out), repeats)
                rates[f"{name}/{form}/{dtype}"] = 2 * rows * k * n / seconds / 1e9
    return rates


def _child(library: str, python: str, repeats: int) -> dict[str, float]:
    out = subprocess.run([python, os.path.abspath(__file__), "--child", library,
                          "--repeats", str(repeats)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON,
                        help="an interpreter with torch installed; 'none': XLA only")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds of both libraries; the best is kept")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per product")
    parser.add_argument("--child", choices=("xla", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f"--rounds and --repeats must be >= 1, got {args.rounds} and {args.repeats}")
    if args.child:
        rates = xla_rates(args.repeats) if args.child == "xla" else torch_rates(args.repeats)
        print(json.dumps(rates))
        return
    with_torch = args.torch_python.lower() != "none"
    if with_torch and not os.access(args.torch_python, os.X_OK):
        parser.error(f"--torch-python {args.torch_python!r} is not an executable: build the "
                     "original's venv with ../shared/bench/original_nri_throughput.sh, or "
                     "pass --torch-python none")
    best: dict[str, dict[str, float]] = {"xla": {}, "torch": {}}
    for _ in range(args.rounds):
        for library in ("xla", "torch") if with_torch else ("xla",):
            python = sys.executable if library == "xla" else args.torch_python
            for key, rate in _child(library, python, args.repeats).items():
                best[library][key] = max(rate, best[library].get(key, 0.0))
    print(f"GFLOP/s, best of {args.rounds} alternating rounds x {args.repeats} calls "
          f"({os.cpu_count()} cores)")
    print("| product | form | dtype | XLA | PyTorch | XLA / PyTorch |")
    print("|---|---|---|---|---|---|")
    for key, rate in best["xla"].items():
        name, form, dtype = key.split("/")
        rows, k, n, _ = SHAPES[name]
        other = best["torch"].get(f"{name}/{form.split(',')[0]}/{dtype}")
        ratio = f"{rate / other:.2f}x" if other else "-"
        print(f"| {name} [{rows}, {k}] x [{k}, {n}] | {form} | {dtype} | {rate:.0f} | "
              f"{f'{other:.0f}' if other else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
