"""The top frames of a py-spy profile recorded with `-f raw` (fanout.py --profile DIR).

    .venv/bin/python bench/profile_top.py DIR/sidecar-5000-tls-0-latency.txt [--top 15]

Self: samples whose innermost frame is this one. Total: samples with this frame anywhere on the
stack (counted once per sample).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# py-spy's raw lines: "thread;frame;frame;... COUNT", a frame "name (file:line)".
LINE = re.compile(r"^(.*) (\d+)$")
LINE_NUMBER = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """A frame without its line number, so one function's samples add up."""
    return LINE_NUMBER.sub(")", frame.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in Path(args.profile).read_text().splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        stack, count = match.group(1).split(";")[1:], int(match.group(2))
        samples += count
        if not stack:
            continue
        names = [frame_name(f) for f in stack]
        own[names[-1]] += count
        for name in set(names):
            total[name] += count
    print(f"{samples} samples: {args.profile}")
    print("self %  total %  frame")
    for name, count in own.most_common(args.top):
        print(f"{100 * count / samples:6.1f}  {100 * total[name] / samples:7.1f}  {name}")


if __name__ == "__main__":
    main()
