"""The rows of a benchmark run, saved to JSON to be drawn again later.

A run of a benchmark takes minutes to hours; its plot should not. The
benchmarks save a run's rows with ``--save FILE`` and draw them without
running anything with ``--replot FILE --plot PNG``. ``benchmarks/results/``
holds the rows of the runs whose tables the docs show, transcribed from
those tables, each with the command that made it and the table it fills.
"""

import json
import platform
import shlex
import sys

import psutil


def add_arguments(parser):
    """Add ``--plot``, ``--save`` and ``--replot`` to a benchmark's parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The benchmark's parser.
    """
    parser.add_argument(
        "--plot", metavar="PNG", help="draw the rows of the run into this PNG file"
    )
    parser.add_argument(
        "--save", metavar="JSON", help="write the rows of the run to this JSON file"
    )
    parser.add_argument(
        "--replot",
        metavar="JSON",
        help="draw the rows saved in this JSON file into --plot, without running",
    )


def check_arguments(parser, args):
    """Refuse ``--replot`` without ``--plot``, or with ``--save``."""
    if args.replot and not args.plot:
        parser.error("--replot draws into the file given by --plot")
    if args.replot and args.save:
        parser.error("--replot runs nothing, so has nothing to --save")


def command(argv=None):
    """Return the command line of this run, as a shell would take it.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments given to the benchmark's ``main``; those of the
        process by default.

    Returns
    -------
    command : str
        ``python`` followed by the script as it was named and its arguments,
        but for ``--save`` and ``--plot``: they write files, and change
        nothing in what the run measures.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    kept = []
    while argv:
        argument = argv.pop(0)
        if argument in ("--save", "--plot"):
            argv = argv[1:]  # and its value
        elif not argument.startswith(("--save=", "--plot=")):
            kept.append(argument)
    return shlex.join(["python", sys.argv[0], *kept])


def machine():
    """Return one line saying what the run ran on."""
    return (
        f"{platform.node()}: {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python "
        f"{platform.python_version()}"
    )


def save(path, rows, argv=None):
    """Write a run's rows, with its command and its machine, to a JSON file.

    Parameters
    ----------
    path : str
        The JSON file to write.
    rows : list of dict
        The run's rows, as the benchmark draws them.
    argv : list of str, default=None
        The arguments given to the benchmark's ``main`` (see :func:`command`).
    """
    run = {"command": command(argv), "machine": machine(), "rows": rows}
    with open(path, "w") as f:
        json.dump(run, f, indent=1)
        f.write("\n")


def load(path):
    """Read a run saved by :func:`save` or transcribed from the docs.

    Parameters
    ----------
    path : str
        The JSON file.

    Returns
    -------
    run : dict
        ``rows``, a list of dict, and ``command``, the command that made the
        run; files transcribed from the docs also say which ``table`` they
        fill.
    """
    with open(path) as f:
        run = json.load(f)
    if "rows" not in run or "command" not in run:
        raise SystemExit(f"{path}: not a saved run (no 'rows' or no 'command')")
    return run
