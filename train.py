"""Trains NRI on a simulated system and reports edge recovery on the test split.

    python train.py                          # the quick springs-5 demo (make demo)
    python train.py --preset springs5        # the paper's protocol
    python train.py --preset tiny --epochs 3 --workdir runs/try
    python train.py --workdir runs/try --resume   # continue an interrupted run
    python train.py --workdir runs/big --coordinator-address host0:1234 \
        --num-processes 2 --process-id 0           # one of two processes (README)

Every config field is also a flag (see --help); flags override the preset.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import types
import typing

from nri_jax import configs, experiment, processes
from nri_jax.checkpointing import CheckpointError


def _parse_optional(inner: type):
    def parse(text: str):
        return None if text.lower() == "none" else inner(text)
    parse.__name__ = inner.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per config field, e.g. --n-train, --encoder, --no-factor."""
    group = parser.add_argument_group("config overrides (default: the preset's value)")
    for name, (part, kind, _) in configs.fields().items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=f"{part}.{name}")
            continue
        args = typing.get_args(kind)
        if isinstance(kind, types.UnionType) and type(None) in args:
            inner = next(a for a in args if a is not type(None))
            group.add_argument(flag, dest=name, type=_parse_optional(inner), default=None,
                               metavar=inner.__name__.upper(), help=f"{part}.{name} (or none)")
        else:
            group.add_argument(flag, dest=name, type=kind, default=None,
                               metavar=kind.__name__.upper(), help=f"{part}.{name}")


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process runs (jax.distributed; every process runs train.py with the same flags "
        "and --workdir)")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run configured by the environment "
                            "(SLURM, Open MPI, TPU pod); implied when JAX_COORDINATOR_ADDRESS "
                            "is set")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="address of process 0's coordinator service")
    group.add_argument("--num-processes", type=int, metavar="INT",
                       help="number of processes in the run")
    group.add_argument("--process-id", type=int, metavar="INT",
                       help="this process's index, 0 .. num_processes - 1")


def config_from_args(args: argparse.Namespace) -> configs.Config:
    config = configs.get_preset(args.preset)
    given = {name: getattr(args, name) for name in configs.fields()
             if getattr(args, name) is not None}
    # "none" on the command line sets an optional field to None explicitly.
    return configs.override(config, **given)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(configs.PRESETS),
                        help="named settings to start from (default: quick)")
    parser.add_argument("--workdir", default=None,
                        help="run directory (default: runs/<preset>-<date-time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --workdir from its latest checkpoint")
    add_distributed_flags(parser)
    add_config_flags(parser)
    args = parser.parse_args(argv)
    if args.resume and args.workdir is None:
        parser.error("--resume needs --workdir")
    # JAX_COORDINATOR_ADDRESS is jax.distributed's own variable: its presence asks for it too.
    distributed = (args.distributed or args.coordinator_address or args.num_processes is not None
                   or args.process_id is not None
                   or bool(os.environ.get("JAX_COORDINATOR_ADDRESS")))
    if distributed and args.workdir is None:
        parser.error("a multi-process run needs --workdir (the same for every process)")
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if distributed:
        try:
            processes.initialize_distributed(args.coordinator_address, args.num_processes,
                                              args.process_id)
        except ValueError as err:
            parser.error(str(err))
    workdir = args.workdir or (f"runs/{args.preset}-"
                               f"{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if processes.is_main_process():
        print(f"run directory: {workdir}", flush=True)
    try:
        experiment.train_and_evaluate(config, workdir, resume=args.resume,
                                      log=lambda line: print(line, flush=True))
    except (experiment.NonFiniteLossError, experiment.RunDirError, CheckpointError, ValueError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
