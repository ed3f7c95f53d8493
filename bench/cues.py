"""Caption cues of a real local session (issue 22 items 1 and 5): the moonshine-voice reading of "A Tale of Two
Cities" (44 s, one printed sentence) through the real embedded recognizer at real time (LocalUpstream), then
webapp/exports.cues over its finals: how many cues, how many cross a turn, their sizes, and the same once the
finals lose the full stop tiny-en puts at every turn's end (what the recognizer change of branch sent22 does: a
turn ends without punctuation mid-sentence).

    python bench/cues.py
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import speech  # noqa: E402
from test_local import SETTINGS, collect, feed, silence  # noqa: E402

from webapp import exports  # noqa: E402
from webapp import local as recognizer  # noqa: E402
from webapp.protocol import StreamParams  # noqa: E402
from webapp.upstreams.local import LocalUpstream  # noqa: E402


def table(label: str, turns: list[dict]) -> str:
    cues = exports.cues(turns)
    spans = [(min(w["start"] for w in t["words"]), t["turn"]) for t in turns if t["words"]]

    def turns_in(c):
        return {n for t in turns for w in t["words"] if c.start - 0.001 <= w["start"] < c.end for n in [t["turn"]]}

    crossing = sum(1 for c in cues if len(turns_in(c)) > 1)
    chars = [len(" ".join(c.lines)) for c in cues]
    secs = [c.end - c.start for c in cues]
    return (
        f"| {label} | {len(turns)} | {len(cues)} | {crossing} | {np.median(chars):.0f} / {max(chars)} | "
        f"{np.median(secs):.2f} / {max(secs):.2f} | {len(spans)} |"
    )


async def main() -> None:
    await recognizer.get_pool(SETTINGS)
    reading = speech.long_clips()[0]
    up = LocalUpstream(SETTINGS, StreamParams())
    await up.connect()
    task = asyncio.create_task(collect(up))
    await feed(up, silence(0.3) + reading.pcm + silence(1.0))
    await up.close()
    events = await asyncio.wait_for(task, 60)
    recognizer.shutdown()
    turns = [e for e in events if e["type"] == "transcript" and e["final"]]
    stripped = [
        {
            **t,
            "text": re.sub(r"[.?!]$", "", t["text"]),
            "words": [
                {**w, "word": re.sub(r"[.?!]$", "", w["word"])} if k == len(t["words"]) - 1 else w
                for k, w in enumerate(t["words"])
            ],
        }
        if i < len(turns) - 1
        else t
        for i, t in enumerate(turns)
    ]
    print("| finals | turns | cues | cues crossing a turn | characters median / max | seconds median / max | timed |")
    print("|---|---|---|---|---|---|---|")
    print(table("as tiny-en ends them (a full stop each)", turns))
    print(table("without the turn-end full stop", stripped))
    print()
    print(exports.to_srt(stripped))


if __name__ == "__main__":
    asyncio.run(main())
