"""Command line: generate an NRI dataset.

    python -m simulators.generate --system springs --n-objects 5 --out data/springs5

Writes the native layout (or, with ``--format reference``, the original code's files) atomically:
an interrupted run leaves nothing that loads, and an existing directory is replaced only with
``--overwrite``. Physics options are the keyword settings of the system's simulator; each one
lists the systems that have it.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
import time
from typing import Any, Callable, Sequence

import jax
from tqdm import tqdm

from simulators import datasets, formats, systems

_NOT_PHYSICS = ("n_objects", "n_frames")
# Help text of the physics settings this package's simulators have; others show their name.
_DESCRIPTIONS = {
    "box_size": "reflecting walls at +-box_size",
    "charge_prob": "probability of a +1 charge",
    "coupling_prob": "probability of each directed coupling K_ij = 1",
    "dt": "integration time step",
    "edge_probs": "probability of each spring type",
    "init_position_std": "standard deviation of the initial positions",
    "init_speed": "initial speed of every object",
    "max_force": "each force component is clipped to +-max_force",
    "omega_range": "natural frequencies uniform in [low, high)",
    "sample_every": "record a frame every this many steps",
    "span_frames": "frames simulated (and used for feature scaling) before cutting",
    "spring_constants": "spring constant of each edge type (type 0 first)",
    "strength": "interaction strength",
}


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _physics_options() -> dict[str, tuple[Any, list[str]]]:
    """Setting name -> (a default, the systems that have it), over all registered systems."""
    options: dict[str, tuple[Any, list[str]]] = {}
    for system in systems.names():
        signature = inspect.signature(systems.get(system).trajectories)
        for name, parameter in signature.parameters.items():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or name in _NOT_PHYSICS \
                    or parameter.default is inspect.Parameter.empty:
                continue
            default, owners = options.get(name, (parameter.default, []))
            options[name] = (default, owners + [f"{system}: {parameter.default!r}"])
    return options


def _add_physics(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "physics", "simulator settings; unset ones keep the system's default (shown per system)")
    for name, (default, owners) in sorted(_physics_options().items()):
        element = default[0] if isinstance(default, tuple) and default else default
        kind = type(element) if isinstance(element, (int, float)) else float
        kind = _at_least(1) if name == "sample_every" else kind
        group.add_argument(_flag(name), type=kind, default=None, dest=name,
                           nargs="+" if isinstance(default, tuple) else None,
                           help=f"{_DESCRIPTIONS.get(name, name)} ({'; '.join(owners)})")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (all options show in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators.generate", description=__doc__.split("\n\n")[0],
        epilog="Example: python -m simulators.generate --system charged --n-objects 5 "
               "--out data/charged5")
    parser.add_argument("--system", required=True, choices=systems.names(),
                        help="which simulator")
    parser.add_argument("--n-objects", type=_at_least(2), default=5,
                        help="N, objects per system (default: %(default)s)")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    for split in datasets.SPLITS:
        parser.add_argument(f"--n-{split}", type=_at_least(1),
                            default=datasets.DEFAULT_SIZES[split],
                            help=f"{split} trajectories (default: %(default)s)")
    for split in datasets.SPLITS:
        parser.add_argument(f"--n-frames-{split}", type=_at_least(1), default=None,
                            help=f"frames per {split} trajectory (default: the system's, "
                                 f"{_default_frames(split)})")
    parser.add_argument("--seed", type=_at_least(0), default=42,
                        help="root seed; splits and trajectories get independent keys "
                             "(default: %(default)s)")
    parser.add_argument("--chunk-size", type=_at_least(1), default=datasets.DEFAULT_CHUNK_SIZE,
                        help="trajectories simulated per call; does not change the data "
                             "(default: %(default)s)")
    parser.add_argument("--n-devices", type=_at_least(1), default=None,
                        help="local devices that share each chunk; does not change the data "
                             "(default: all of jax.local_devices())")
    parser.add_argument("--format", choices=formats.FORMATS, default="native",
                        help="native: one .npy per split and array + metadata.json; "
                             "reference: the original NRI code's files (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset directory once the new one is complete")
    _add_physics(parser)
    return parser


def _default_frames(split: str) -> str:
    return ", ".join(f"{system} {systems.default_n_frames(system, split)}"
                     for system in systems.names())


def _settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    physics = {name: getattr(args, name) for name in _physics_options()
               if getattr(args, name) is not None}
    accepted = datasets.physics_parameters(args.system)
    for name in physics:
        if name not in accepted:
            parser.error(f"{_flag(name)} is not a {args.system} setting; {args.system} has "
                         f"{', '.join(_flag(n) for n in sorted(accepted))}")
    settings = dict(system=args.system, n_objects=args.n_objects, seed=args.seed,
                    physics=physics, **{f"n_{s}": getattr(args, f"n_{s}") for s in datasets.SPLITS},
                    **{f"n_frames_{s}": getattr(args, f"n_frames_{s}") for s in datasets.SPLITS})
    try:
        _check_physics(datasets.dataset_settings(**settings))
    except ValueError as error:
        parser.error(str(error))
    return settings


def _check_physics(settings: dict[str, Any]) -> None:
    """Runs the simulator's checks of the physics values by tracing it: nothing is simulated.

    Without this, a bad value (e.g. a negative dt) would surface only once generation starts.
    """
    simulate = functools.partial(
        systems.get(settings["system"]).trajectories, n_objects=settings["n_objects"],
        n_frames=max(settings["n_frames"].values()),
        **datasets.physics_parameters(settings["system"], settings["physics"]))
    jax.eval_shape(simulate, jax.random.split(jax.random.key(0), 1))


def _progress_bar(split: str) -> Callable[[int, int], None]:
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=split, unit="traj", file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = _settings(args, parser)
    start = time.perf_counter()
    try:
        path = datasets.build_dataset(args.out, format=args.format, chunk_size=args.chunk_size,
                                      overwrite=args.overwrite, progress=_progress_bar,
                                      n_devices=args.n_devices, **settings)
    except (FileExistsError, ValueError) as error:
        # Existing directories and physics settings the simulator rejects (e.g. a negative dt).
        parser.error(str(error))
    seconds = time.perf_counter() - start
    metadata = formats.read_metadata(path)
    print(f"{metadata['system']} dataset with {metadata['n_objects']} objects written to {path} "
          f"({args.format} format) in {seconds:.1f} s")
    for split in datasets.SPLITS:
        files = metadata["splits"][split]["files"]
        shapes = ", ".join(f"{name} {tuple(entry['shape'])} {entry['dtype']}"
                           for name, entry in files.items())
        print(f"  {split}: {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
