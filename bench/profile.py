"""Where the saga path spends its CPU: py-spy samples every process of the fleet while sagas run.

    .venv/bin/python -m bench.profile [--seconds 20] [--clients 64] [--bare] [--out DIR] [--top 25]

Writes one collapsed-stack file per process into DIR (feed them to any flame-graph tool) and prints,
per process, the functions with the most samples on the stack (inclusive) and on top (self).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.load import closed_loop
from bench.sagas import BareSagas, GatewaySagas, new_session
from bench.stack import Stack, prepare, refresh_tokens, service_token, start_fleet


def summarize(path: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # a frame name with a newline in it (exec'd code) splits a line
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples; inclusive:"]
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


async def load(stack: Stack, clients: int, seconds: float, bare: bool) -> None:
    async with new_session(clients * 2 + 8) as session:
        driver = BareSagas(stack, session, service_token(stack)) if bare else GatewaySagas(stack, session)
        figures = await closed_loop("profiled", driver.one, clients, seconds, 0)
    print(f"{figures.per_sec}/s p50 {figures.p50_ms} ms p99 {figures.p99_ms} ms failures {figures.failures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--bare", action="store_true", help="profile the bare client's calls instead of sagas")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", default="", help="comma-separated process names to profile")
    parser.add_argument("--gil", action="store_true", help="only samples that hold the GIL (Python's own CPU)")
    parser.add_argument("--native", action="store_true", help="C frames too (extension modules, the interpreter)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    stack = start_fleet()
    try:
        prepare(stack)
        refresh_tokens(stack)
        asyncio.run(load(stack, args.clients, 5, args.bare))  # warm-up
        # (py-spy samples Python: not the bus's nats-server)
        names = [n for n in stack.pids if n != "nats-server" and (not args.only or n in args.only.split(","))]
        # (native stacks need the process paused while sampled: py-spy refuses --nonblocking with them)
        options = ["--duration", str(int(args.seconds)), "--rate", "200", "--format", "raw",
                   *([] if args.native else ["--nonblocking"]),
                   *(["--gil"] if args.gil else []),
                   *(["--native"] if args.native else [])]
        spies = {name: subprocess.Popen(
            [py_spy, "record", "--pid", str(stack.pids[name]), *options, "--output", str(out / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in names}
        asyncio.run(load(stack, args.clients, args.seconds, args.bare))
        for spy in spies.values():
            spy.wait(60)
    finally:
        stack.stop()
    for name in spies:
        path = out / f"{name}.txt"
        print(f"\n== {name}")
        print(summarize(path, args.top) if path.exists() else "  (no profile)")
    print(f"\ncollapsed stacks in {out}")


if __name__ == "__main__":
    main()
