"""Component tests of the embedded recognizer, LocalUpstream and the Flux-compatible engine: real recognition of
real recorded speech (pocketsphinx-testdata), no mocks. Sleeps only pace audio at real time."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speech  # noqa: E402

from webapp import config  # noqa: E402
from webapp import local as recognizer  # noqa: E402
from webapp.local import vad  # noqa: E402
from webapp.local.engine import build_engine_app  # noqa: E402
from webapp.local.planner import VOICE_WAIT, Cut, TurnPlanner, continued_stops, drop_repeat, ends_repeated  # noqa: E402
from webapp.local.stream import lower_thread_priority  # noqa: E402
from webapp.local.tuning import Tuning  # noqa: E402
from webapp.protocol import StreamParams  # noqa: E402
from webapp.upstreams.base import UpstreamError  # noqa: E402
from webapp.upstreams.local import LocalUpstream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 2560  # 80 ms at 16 kHz
SLOTS = 2
SETTINGS = config.load({}, local_max_streams=SLOTS)


def silence(seconds: float, rate: int = 16000) -> bytes:
    rng = np.random.default_rng(1)
    return np.clip(rng.normal(0, 20, int(seconds * rate)), -32768, 32767).astype("<i2").tobytes()


async def feed(up, pcm: bytes, realtime: bool = True, chunk: int = CHUNK, bytes_per_second: int = 32000) -> None:
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), chunk)):
        up.send_audio(pcm[i:i + chunk])
        if realtime:  # pacing only, never used to wait for a result
            await asyncio.sleep(max(0.0, t0 + (k + 1) * chunk / bytes_per_second - time.monotonic()))


async def collect(up) -> list[dict]:
    return [ev async for ev in up.events()]


def check_turns(events: list[dict]) -> list[str]:
    """Assert StartOfTurn, interims, final, EndOfTurn per turn with increasing indices; return the finals."""
    finals, open_turn, last = [], None, -1
    for ev in events:
        if ev["type"] == "turn" and ev["event"] == "StartOfTurn":
            assert open_turn is None and ev["turn"] > last
            open_turn = ev["turn"]
        elif ev["type"] == "transcript":
            assert ev["turn"] == open_turn, ev
            assert 0 <= ev["start"] <= ev["end"]
            if ev["final"]:
                finals.append(ev["text"])
        elif ev["type"] == "turn" and ev["event"] == "EndOfTurn":
            assert ev["turn"] == open_turn
            assert events[events.index(ev) - 1]["final"] is True
            last, open_turn = open_turn, None
    assert open_turn is None, "a turn was left open"
    return finals


@pytest.fixture(scope="module")
async def pool():
    recognizer.shutdown()  # a pool with this module's slot count
    p = await recognizer.get_pool(SETTINGS)
    yield p
    recognizer.shutdown()


async def test_realtime_clip_gives_turns_and_transcript(pool):
    a, b = speech.clip("lv-0880"), speech.clip("cards-005")
    up = LocalUpstream(SETTINGS, StreamParams())
    await up.connect()
    task = asyncio.create_task(collect(up))
    await feed(up, silence(0.3) + a.pcm + silence(1.0) + b.pcm + silence(1.0))
    await up.close()
    events = await asyncio.wait_for(task, 30)
    finals = check_turns(events)
    assert len(finals) >= 2
    assert any(ev["type"] == "transcript" and not ev["final"] for ev in events), "no interim transcript"
    assert speech.wer(a.ref + " " + b.ref, " ".join(finals)) <= 0.25, finals


async def test_close_finalizes_the_last_turn(pool):
    c = speech.clip("goforward")
    up = LocalUpstream(SETTINGS, StreamParams())
    await up.connect()
    task = asyncio.create_task(collect(up))
    await feed(up, c.pcm[: int(2.3 * 32000)], realtime=False)  # cut right at the end of speech, no tail
    await up.close()
    events = await asyncio.wait_for(task, 30)
    finals = check_turns(events)
    assert finals and speech.wer(c.ref, " ".join(finals)) <= 0.5, finals
    assert events[-1] == {"type": "turn", "turn": events[-1]["turn"], "event": "EndOfTurn"}


async def test_resamples_48k(pool):
    c = speech.clip("cards-003")
    x = c.samples.astype(np.float64)
    y = np.interp(np.arange(len(x) * 3) / 3, np.arange(len(x)), x).astype("<i2").tobytes()
    up = LocalUpstream(SETTINGS, StreamParams(sample_rate=48000))
    await up.connect()
    task = asyncio.create_task(collect(up))
    await feed(up, y + silence(0.5, 48000), realtime=False, chunk=CHUNK * 3)
    await up.close()
    finals = check_turns(await asyncio.wait_for(task, 30))
    assert speech.wer(c.ref, " ".join(finals)) <= 0.34, finals


async def test_capacity_refused_while_a_stream_keeps_working(pool):
    c = speech.clip("cards-001")
    running = LocalUpstream(SETTINGS, StreamParams())
    await running.connect()
    task = asyncio.create_task(collect(running))
    other = LocalUpstream(SETTINGS, StreamParams())
    await other.connect()  # the last free slot
    extra = LocalUpstream(SETTINGS, StreamParams())
    with pytest.raises(UpstreamError) as err:
        await extra.connect()
    assert err.value.code == "capacity" and err.value.retryable
    assert f"all {SLOTS}" in err.value.message.lower() and "LOCAL_MAX_STREAMS" in err.value.message
    await feed(running, c.pcm + silence(0.8))
    await running.finalize()
    await running.close()
    await other.abort()
    finals = check_turns(await asyncio.wait_for(task, 30))
    assert speech.wer(c.ref, " ".join(finals)) <= 0.34, finals
    again = LocalUpstream(SETTINGS, StreamParams())  # slots are given back
    await again.connect()
    await again.abort()


def _nice_values(pid: int) -> list[int]:
    """The nice value of every thread of a process (field 19 of /proc/PID/task/TID/stat)."""
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        values.append(int(stat[stat.rindex(")") + 2:].split()[16]))
    return values


async def test_stream_threads_yield_to_final_decodes(pool):
    """Each stream's thread in a worker runs at Tuning.stream_nice (interims can wait); the final-decoder thread,
    whose decodes speakers wait for, and the rest of the worker stay at nice 0."""
    c = speech.clip("cards-002")
    ups = [LocalUpstream(SETTINGS, StreamParams()) for _ in range(SLOTS)]
    for up in ups:
        await up.connect()
    tasks = [asyncio.create_task(collect(up)) for up in ups]
    await asyncio.gather(*(feed(up, c.pcm + silence(0.6)) for up in ups))
    for up in ups:
        await up.finalize()  # every stream's thread has handled audio by now
    nice = [v for w in pool.workers for v in _nice_values(w.proc.pid)]
    for up in ups:
        await up.close()
    await asyncio.gather(*tasks)
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the workers inherit the test run's nice (CI may run it niced)
    if base + Tuning.stream_nice > 19:
        pytest.skip("the test run is niced too far to nice a thread further")
    assert nice.count(base + Tuning.stream_nice) == SLOTS and Tuning.stream_nice > 0, nice
    assert nice.count(base) >= 2 * len(pool.workers)  # at least each worker's main and final-decoder threads


def test_a_stream_thread_is_niced_relative_to_its_own_nice():
    """Under a niced service (systemd Nice=5) an absolute nice 5 would put the streams' threads level with the final
    decodes they should yield to: the step is added to the thread's own value."""
    seen = []

    def run():
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + 3)
        before = os.getpriority(os.PRIO_PROCESS, tid)
        lower_thread_priority(Tuning.stream_nice)
        seen.append((before, os.getpriority(os.PRIO_PROCESS, tid)))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    before, after = seen[0]
    assert after == min(19, before + Tuning.stream_nice), seen


# ---- the Flux-compatible engine -------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_url(pool):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(build_engine_app(manage_pool=False), host="127.0.0.1", port=port,
                                          ws="websockets-sansio", ws_per_message_deflate=False, log_level="warning",
                                          lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)  # start-up poll, bounded
    assert server.started
    yield f"ws://127.0.0.1:{port}/v2/listen"
    server.should_exit = True
    thread.join(10)


QUERY = "?model=flux-general-en&encoding=linear16&sample_rate=16000"


async def test_engine_speaks_flux(engine_url):
    c = speech.clip("cards-002")
    async with websockets.connect(engine_url + QUERY, additional_headers={"Authorization": "Token anything"}) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "Connected" and first["sequence_id"] == 0 and first["request_id"]
        msgs = [first]

        async def reader():
            async for raw in ws:
                msgs.append(json.loads(raw))

        task = asyncio.create_task(reader())
        await ws.send(json.dumps({"type": "ForceEndTurn"}))  # no turn yet -> Warning
        pcm = c.pcm + silence(0.6)
        t0 = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), CHUNK)):
            await ws.send(pcm[i:i + CHUNK])
            await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK / 32000 - time.monotonic()))
        await ws.send(c.pcm[: len(c.pcm) // 2])  # a second utterance, closed by CloseStream
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(task, 30)
        assert ws.close_code == 1005  # closed without a status code, as Flux does
    seqs = [m["sequence_id"] for m in msgs]
    assert seqs == list(range(len(msgs)))
    assert any(m["type"] == "Warning" and m["code"] == "FORCE_END_TURN_NO_ACTIVE_TURN" for m in msgs)
    infos = [m for m in msgs if m["type"] == "TurnInfo"]
    assert infos and infos[0]["event"] == "StartOfTurn" and infos[0]["transcript"]
    for m in infos:
        assert {"request_id", "turn_index", "audio_window_start", "audio_window_end", "transcript", "words",
                "end_of_turn_confidence"} <= m.keys()
        assert m["request_id"] == first["request_id"]
        assert ("trigger" in m) == (m["event"] == "EndOfTurn")
    ends = [m for m in infos if m["event"] == "EndOfTurn"]
    assert len(ends) == 1 and ends[0]["turn_index"] == 0 and ends[0]["trigger"] == "model"
    assert speech.wer(c.ref, ends[0]["transcript"]) <= 0.5
    assert infos[-1]["event"] != "EndOfTurn" and infos[-1]["turn_index"] == 1  # CloseStream: Updates only


async def test_engine_rejects_bad_params_keepalive_and_force_end_turn(engine_url):
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(engine_url + "?model=nova-3&encoding=linear16&sample_rate=16000"):
            pass
    assert err.value.response.status_code == 400
    async with websockets.connect(engine_url + QUERY) as ws:
        assert json.loads(await ws.recv())["type"] == "Connected"
        pcm = speech.clip("cards-001").pcm
        for i in range(0, len(pcm), CHUNK):
            await ws.send(pcm[i:i + CHUNK])
        await ws.send(json.dumps({"type": "ForceEndTurn"}))
        msgs = []
        while not any(m.get("event") == "EndOfTurn" for m in msgs):
            msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
        assert msgs[-1]["trigger"] == "manual" and speech.wer("ten of clubs", msgs[-1]["transcript"]) <= 0.34
        await ws.send(json.dumps({"type": "KeepAlive"}))
        err_msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert err_msg["type"] == "Error" and err_msg["description"]
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)


async def test_engine_capacity_is_429(engine_url, pool):
    held = [pool.open_stream(lambda kind, data: None) for _ in range(SLOTS)]
    try:
        with pytest.raises(websockets.InvalidStatus) as err:
            async with websockets.connect(engine_url + QUERY):
                pass
        assert err.value.response.status_code == 429
    finally:
        for s in held:
            s.abort()


# ---- offline ------------------------------------------------------------------------------------

def test_recognizer_makes_no_network_access(tmp_path):
    """Web process and workers run under an audit hook (sitecustomize) that refuses and records any connect
    or DNS lookup that is not loopback / AF_UNIX."""
    hook = tmp_path / "hook"
    hook.mkdir()
    record = tmp_path / "attempts.txt"
    (hook / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        def _audit(event, args):
            if event == "socket.getaddrinfo":
                host = args[0]
                if host not in (None, "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1"):
                    open({str(record)!r}, "a").write(f"{{event}} {{args!r}}\\n")
                    raise OSError("network disabled by test")
            elif event in ("socket.connect", "socket.sendto"):
                addr = args[1]
                if isinstance(addr, tuple) and addr[0] not in ("127.0.0.1", "::1", "localhost"):
                    open({str(record)!r}, "a").write(f"{{event}} {{addr!r}}\\n")
                    raise OSError("network disabled by test")
        sys.addaudithook(_audit)
    """))
    script = textwrap.dedent("""
        import asyncio, sys
        sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
        import speech
        from webapp import config
        from webapp import local as recognizer
        from webapp.protocol import StreamParams
        from webapp.upstreams.local import LocalUpstream
        async def main():
            up = LocalUpstream(config.load({}), StreamParams())
            await up.connect()
            c = speech.clip("cards-003")
            pcm = c.pcm + bytes(16000)
            for i in range(0, len(pcm), 2560):
                up.send_audio(pcm[i:i + 2560])
            await up.close()
            print("FINALS", [e["text"] for e in [e async for e in up.events()] if e.get("final")])
            recognizer.shutdown()
        asyncio.run(main())
    """)
    env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{ROOT}")
    out = subprocess.run([sys.executable, "-c", script, str(ROOT)], env=env, capture_output=True, text=True,
                         timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert "FINALS" in out.stdout and "clubs" in out.stdout.lower(), out.stdout
    assert not record.exists(), record.read_text()


@pytest.mark.parametrize("argv, expect", [
    ([], Tuning()),
    (["--end-silence", "5", "--onnx-interims", "0"], Tuning(end_silence=5.0, onnx_interims=False)),
    (["--beams", "2", "--stream-nice", "0", "--trace", "1"], Tuning(beams=2, stream_nice=0, trace=True)),
])
def test_benchmark_flags_give_the_tuning_each_worker_gets(argv, expect):
    """Every experiment knob is a benchmark flag; the Tuning reaches a worker as JSON on its command line."""
    import argparse

    from webapp.local import tuning
    ap = argparse.ArgumentParser()
    tuning.add_arguments(ap)
    got = tuning.from_arguments(ap.parse_args(argv))
    assert got == expect and Tuning.from_json(got.to_json()) == got


@pytest.mark.parametrize("steps, expect", [
    # (add text, at s, from s | None), then (end s -> expected cut text, cut at s)
    ([("one", 1.0, None)], [(5.0, ("", None))]),                          # head under 2 s: not a cut
    ([("one two", 2.5, None)], [(4.0, ("", None)), (4.5, ("one two", 2.5))]),  # the rest must be 2 s too
    ([("a", 2.5, None), ("a b", 3.5, 2.5), ("a b c", 5.0, 2.5)],           # a part from the last cut under 2 s
     [(6.9, ("a", 2.5)), (7.0, ("a b c", 5.0)), (9.0, ("a b c", 5.0))]),
    ([("a", 3.0, None), ("late", 2.8, None)], [(6.0, ("a", 3.0))]),        # cuts only move forward
])
def test_cut_rule_keeps_both_parts_long(steps, expect):
    """A turn's decode may start at a cut (an earlier decode's text at a pause) only if the part before the cut and
    the part after it are both cut_min_seconds long: tiny-en decodes short fragments badly."""
    p = TurnPlanner(Tuning(cut_from_seconds=0.0))
    p.ep.onset = int(0.3 * 16000)  # region starts at 0
    sec = lambda t: None if t is None else int(t * 16000)  # noqa: E731
    for text, at, start in steps:
        p.add_cut(text, sec(at), sec(start))
    for end, (text, at) in expect:
        assert p.cut_for(sec(end)) == (text, sec(at)), (end, p.cuts)
    p.t = Tuning()
    assert p.cut_for(sec(5.9)) == ("", None)  # a turn under cut_from_seconds (6 s) decodes whole


@pytest.mark.parametrize("decoded_to, committed_at, next_onset, region", [
    (4.1, 5.0, 5.1, 4.8),  # a late commit (slow decode): the next turn still gets its 0.3 s look-behind
    (4.1, 4.3, 4.3, 4.1),  # a word right after the decoded audio: back to its end, not into the last turn
    (4.1, 4.3, 6.0, 5.7),
])
def test_next_turn_looks_behind_to_the_decoded_audio_end(decoded_to, committed_at, next_onset, region):
    """After a turn ends, the next turn's audio may start anywhere after the audio the final was decoded from.
    It was cut at the commit instead: when a slow decode made the commit late, a word said right after it lost its
    soft start ("We"), and the turn decoded after it as context came out "We all go and direct to heaven"."""
    p = TurnPlanner(Tuning())
    sec = lambda t: int(round(t * 16000))  # noqa: E731
    p.total = sec(committed_at)
    p.end_turn(upto=sec(decoded_to))
    p.new_turn()
    p.ep.onset = sec(next_onset)
    assert p.region_start() == sec(region)


@pytest.mark.parametrize("text, repeated", [
    ("It was the epoch of incredulity. It was a season of light. It was a season of light.", True),
    ("It was a season of light, it was a season of light", True),
    ("It was the best of times, it was the worst of times.", False),
    ("No. No.", False),  # one word said twice is speech, not the model looping
    ("Seven of clubs.", False),
])
def test_a_cut_that_ends_in_a_repeated_phrase_is_not_kept(text, repeated):
    """Tiny-en sometimes says a turn's last phrase twice; kept as a cut, that text would start every later decode of
    the turn (seen: "It was a season of light. It was a season of light. It was the season of darkness.")."""
    assert ends_repeated(text) == repeated


@pytest.mark.parametrize("text, shown", [
    # seen in a batch decode of the reading: the decoder's own next word says the sentence goes on
    ("It was the best of times. it was the worst of times.", "It was the best of times, it was the worst of times."),
    ("We had everything before us. we had nothing", "We had everything before us, we had nothing"),
    ("He was not. An ill-disposed young man.", "He was not. An ill-disposed young man."),  # a capital: kept
    ("And Mr. smith said", "And Mr. smith said"),  # a title, not a sentence end
    ("at 9 a.m. today, 10.5 meters", "at 9 a.m. today, 10.5 meters"),
    ("Wait... what", "Wait... what"),
])
def test_a_full_stop_the_decoder_went_on_from_in_lower_case_is_a_comma(text, shown):
    assert continued_stops(text) == shown


@pytest.mark.parametrize("interim, cut, draft", [
    ("It was the best of times, it was the worst", None, "It was the best of times, it was the worst"),
    # in the decoder's case: a decode from a cut starts with a capital (stream._join lowers it for the interim)
    ("It was the best of times, it was the worst", ("It was the best of times,", 2.5), "It was the worst"),
    ("we had everything", None, "We had everything"),  # an interim after a final without a sentence mark
    ("", None, ""),  # no interim yet: token by token
])
def test_a_final_decode_gets_the_interim_text_as_its_draft(interim, cut, draft):
    """The final decoder checks the interims' words instead of decoding token by token (webapp/local/onnxdecoder.py);
    a decode that starts at a cut gets the words after the cut's."""
    p = TurnPlanner(Tuning())
    sec = lambda t: int(round(t * 16000))  # noqa: E731
    p.add(np.zeros(sec(8.0), np.float32))
    p.ep.onset = sec(0.3)
    p.line_text, p.cuts = interim, [] if cut is None else [Cut(cut[0], sec(cut[1]))]
    base, start, job = p.job()
    assert (base, start) == (("", None) if cut is None else (cut[0], sec(cut[1])))
    assert job.draft == draft


@pytest.mark.parametrize("interim, cut, held, draft", [
    # the cut's decode read "do forth, he was not" as "do for it. He was not.": the interim keeps what it showed,
    # and the draft starts after the interim's words for the cut's part (counted, it started a word late)
    ("to do forth, he was not an ill spoke", "to do for it. He was not.", "to do forth, he was not", "An ill spoke"),
    ("to do for it, he was not an ill spoke", "to do for it. He was not.", "to do for it. He was not.", "An ill spoke"),
    # the cut reaches into the interim's open last word, or past it: the cut's text
    ("to do forth, he was not", "to do for it. He was not.", "to do for it. He was not.", ""),
    ("to do forth", "to do for it. He was not.", "to do for it. He was not.", ""),
])
def test_an_interim_from_a_new_cut_keeps_the_words_shown_for_its_part(interim, cut, held, draft):
    """Calm interims (issue 22): a long turn's interims are decoded from its latest cut, whose text is a
    speculative final's decode that no calm check held: it rewrote words the interims had shown."""
    p = TurnPlanner(Tuning())
    p.line_text = interim
    assert p.held(cut) == held
    assert p.draft(cut) == draft
    assert TurnPlanner(Tuning(interim_margin=0)).held(cut) == cut  # calm interims off


@pytest.mark.parametrize("text, shown", [
    ("it was it was", "it was"),
    ("The period with the period with the period with", "The period with"),
    ("we all with with", "we all with"),
    ("It was the best of times, it was the worst", "It was the best of times, it was the worst"),
    ("yeah, yeah", "yeah, yeah"),  # a word said twice, punctuated: speech
])
def test_an_interim_does_not_show_the_decoders_loop_at_its_end(text, shown):
    """Tiny-en loops on a word the audio's end cuts off ("it was it was" for "it was the age"); the interim after
    it rewrote the loop's first copy."""
    assert drop_repeat(text) == shown


@pytest.mark.parametrize("margin, text, keeps", [
    (3.0, "It was the best of times, it was the worst of", True),  # the interim grew
    (3.0, "It was the best of times, it was the world", True),     # its last word may still change
    (3.0, "It was the best of times. It was the worst", True),     # punctuation and case are no words
    (3.0, "It was the best of times. It was", False),              # shown words dropped
    (3.0, "It was the best of crimes, it was the worst", False),   # a word shown before it changed
    (0.0, "It was the best of crimes, it was the worst", True),    # calm interims off: anything goes
])
def test_a_speculative_decode_is_no_interim_if_it_rewrites_shown_words(margin, text, keeps):
    """A speculative final that speech overtook becomes an interim only if it keeps the words the calm interims
    hold (all but the last interim_open_words of the last interim)."""
    p = TurnPlanner(Tuning(interim_margin=margin, interim_open_words=1))
    p.line_text = "It was the best of times, it was the worst"
    assert p.keeps_shown(text) == keeps


@pytest.mark.parametrize("heard, voiced, seconds, onnx", [
    (True, [1.0, 1.032, 1.064], 3.0, True),  # an open turn with voice in it: the onnx decoder reads it
    (True, [1.0, 1.032], 3.0, False),        # two chunks of voice (a breath had one): not yet
    (True, [0.0, 0.032, 0.064], 3.0, False),  # voice before the turn began (its look-behind): not this turn's
    (False, [1.0, 1.032, 1.064], 3.0, False),  # no turn open: nothing to decode
    (True, [1.0, 1.032, 1.064], 9.0, False),   # a long turn: libmoonshine's line end is what may end it
])
def test_interims_come_from_the_onnx_decoder_once_the_turn_has_voice(heard, voiced, seconds, onnx):
    p = TurnPlanner(Tuning(onnx_interims=True), vad.StreamVad(None), onnx=True)
    p.ep.onset, p.total = int(0.3 * 16000), int(seconds * 16000)
    p.heard = heard
    p.vad.voiced = [int(t * 16000) for t in voiced]
    assert p.onnx_interims() == onnx
    # no voice yet: no interim at all for up to VOICE_WAIT, then libmoonshine's (a quiet voice still gets interims)
    p.vad.voiced = []
    for at, waits in ((1.2, heard), (0.3 + VOICE_WAIT, False)):
        p.total = int(at * 16000)
        assert p.waiting_for_voice() == waits, at


@pytest.mark.parametrize("long_interims, cut, onnx", [
    (True, 5.0, True),    # a long turn with a cut: onnx interims from the cut (libmoonshine's re-decode lagged)
    (True, 7.5, False),   # the cut leaves under cut_min_seconds to decode: libmoonshine's line
    (True, None, False),  # no cut: libmoonshine's line end is what may end the turn
    (False, 5.0, False),  # long_interims off: libmoonshine's interims past MODEL_END_SECONDS, as before
])
def test_a_long_turn_gets_onnx_interims_from_its_latest_cut(long_interims, cut, onnx):
    p = TurnPlanner(Tuning(long_interims=long_interims), vad.StreamVad(None), onnx=True)
    sec = lambda t: int(round(t * 16000))  # noqa: E731
    p.append(np.zeros(sec(9.0), np.float32))
    p.ep.onset, p.heard = sec(0.3), True
    p.vad.voiced = [sec(1.0), sec(1.032), sec(1.064)]
    p.cuts = [] if cut is None else [Cut("It was the best of times,", sec(cut))]
    assert p.long_turn() and p.onnx_interims() == onnx


class RecordingSession:
    """Stands in for the Silero session: records each window and says "speech" for windows with a loud sample."""

    def __init__(self):
        self.windows = []

    def run(self, _, feed):
        self.windows.append(feed["input"][0].copy())
        loud = float(np.abs(feed["input"][0, vad.CONTEXT:]).max() > 0.5)
        return np.array([[loud]], np.float32), feed["state"] + 1


@pytest.mark.parametrize("pieces", [[100] * 42, [1000, 2000, 1200], [4200], [511, 1, 513, 3175]])
def test_voice_detector_windows_are_the_stream_whatever_the_chunking(pieces):
    """Each 512-sample chunk goes to the model with the 64 samples before it (as Silero's own wrapper feeds it),
    however the audio arrives; the chunks with speech are counted from a sample on."""
    x = np.random.default_rng(3).uniform(-0.4, 0.4, sum(pieces)).astype(np.float32)
    x[2100] = 0.9  # speech in the chunk at 2048
    x[3600] = 0.9  # and in the chunk at 3584
    rec = RecordingSession()
    v = vad.StreamVad(rec)
    at = 0
    for n in pieces:
        v.process(x[at:at + n])
        at += n
    padded = np.concatenate([np.zeros(64, np.float32), x])
    assert len(rec.windows) == len(x) // 512
    for k, w in enumerate(rec.windows):
        assert np.array_equal(w, padded[k * 512:k * 512 + 576]), k
    assert v.pos == len(rec.windows) * 512 and float(v.state.max()) == len(rec.windows)  # the state is carried
    assert v.voiced == [2048, 3584]
    assert [v.voiced_since(s) for s in (0, 2048, 2049, 3584, 3585)] == [2, 2, 1, 1, 0]


async def test_interims_follow_the_audio_with_the_decoders_words(pool):
    """A 7 s turn of the reading: the interims are the onnx decoder's reading of all the audio so far, so they end
    where the audio was when they were decoded (whole 80 ms chunks) and grow to the final's words."""
    reading = speech.long_clips()[0]
    up = LocalUpstream(SETTINGS, StreamParams())
    await up.connect()
    task = asyncio.create_task(collect(up))
    await feed(up, silence(0.3) + reading.pcm[: int(6.9 * 16000) * 2] + silence(1.0))
    await up.close()
    events = await asyncio.wait_for(task, 30)
    check_turns(events)
    first = [e for e in events if e["type"] == "transcript"]
    turn = [e for e in first if e["turn"] == first[0]["turn"]]
    interims, final = [e for e in turn if not e["final"]], turn[-1]
    assert final["final"] and len(interims) >= 4, turn
    ends = [e["end"] for e in interims]
    assert ends == sorted(ends) and all(round(e * 12.5, 3).is_integer() for e in ends), ends  # whole 80 ms chunks
    assert speech.wer(final["text"], interims[-1]["text"]) <= 0.25, (interims[-1], final)


async def test_a_killed_worker_is_replaced_and_captions_go_on(pool):
    """A recognizer worker killed from outside (the OOM killer, a crash in libmoonshine): the next session still
    gets captions. Before, every later session failed with upstream_unavailable until the app was restarted."""
    victim = pool.workers[0]
    victim.proc.kill()
    await asyncio.get_running_loop().run_in_executor(None, victim.proc.wait)
    c = speech.clip("cards-003")
    for _ in range(2):  # two sessions: the one on the replaced worker and the other
        up = LocalUpstream(SETTINGS, StreamParams())
        await up.connect()
        task = asyncio.create_task(collect(up))
        await feed(up, silence(0.3) + c.pcm + silence(1.0), realtime=False)
        await up.close()
        finals = check_turns(await asyncio.wait_for(task, 30))
        assert speech.wer(c.ref, " ".join(finals)) <= 0.34, finals
    assert pool.workers[0] is not victim and all(w.proc.poll() is None for w in pool.workers)


def uncovered_speech(pcm: bytes, spans: list[tuple[float, float]], margin: float = 0.1) -> float:
    """Seconds of speech (20 ms frames 15 dB over the background) outside every final's [start, end] (± margin)."""
    db = speech._envelope_db(pcm)
    loud = db > speech.noise_floor_db(pcm) + 15
    t = (np.arange(len(db)) + 0.5) * 0.02
    covered = np.zeros(len(db), bool)
    for start, end in spans:
        covered |= (t >= start - margin) & (t <= end + margin)
    return float(np.sum(loud & ~covered) * 0.02)


def missing_words(ref: str, hyp: str) -> list[str]:
    """Reference words that no final has: the deletions of a word alignment (Levenshtein with a backtrace).
    A misrecognized word (a substitution) was heard and is in a final; a deleted one is not."""
    r, h = speech.normalize(ref), speech.normalize(hyp)
    d = np.zeros((len(r) + 1, len(h) + 1), int)
    d[:, 0], d[0, :] = np.arange(len(r) + 1), np.arange(len(h) + 1)
    for i in range(1, len(r) + 1):
        for j in range(1, len(h) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (r[i - 1] != h[j - 1]))
    i, j, lost = len(r), len(h), []
    while i > 0:
        if j > 0 and d[i, j] == d[i - 1, j - 1] + (r[i - 1] != h[j - 1]):
            i, j = i - 1, j - 1
        elif j > 0 and d[i, j] == d[i, j - 1] + 1:
            j -= 1
        else:
            lost.append(r[i - 1])
            i -= 1
    return lost[::-1]


async def test_long_turns_lose_no_speech_and_their_finals_are_on_time(pool):
    """Issue 22 item 3: five consecutive LibriVox sentences read without a pause that ends a turn (a 7 s and a 15 s
    turn: moonshine's line end cuts the long one), on every slot of the pool at once. Every word is in a final
    (word alignment: only as many missing as the WER allows), no stretch of speech is outside all finals, and
    every final comes within 1.5 s of the end of its audio."""
    c = speech.joined([speech.clip(n) for n in ("lv-0870", "lv-0880", "lv-0890", "lv-0920", "lv-0930")], "joined")
    pcm = silence(0.3) + c.pcm + silence(1.0)

    async def one():
        up = LocalUpstream(SETTINGS, StreamParams())
        await up.connect()
        got = []

        async def reader():
            async for ev in up.events():
                got.append((time.monotonic(), ev))

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        await feed(up, pcm)
        await up.close()
        await asyncio.wait_for(task, 30)
        return t0, got

    for t0, got in await asyncio.gather(*(one() for _ in range(SLOTS))):
        finals = [(wall, ev) for wall, ev in got if ev["type"] == "transcript" and ev["final"]]
        check_turns([ev for _, ev in got])
        text = " ".join(ev["text"] for _, ev in finals)
        lost = missing_words(c.ref, text)
        late = [wall - t0 - ev["end"] for wall, ev in finals]
        seen = [(ev["start"], ev["end"], round(x, 2), ev["text"][-40:]) for x, (_, ev) in zip(late, finals)]
        assert len(lost) <= 0.04 * len(speech.normalize(c.ref)), (lost, seen)
        assert uncovered_speech(pcm, [(ev["start"], ev["end"]) for _, ev in finals]) <= 0.2, seen
        assert max(late) <= 1.5, seen
        # item 2: interims end without a sentence-final mark and say how much of them the last two agreed on
        interims = [ev for _, ev in got if ev["type"] == "transcript" and not ev["final"]]
        assert interims and not [ev["text"] for ev in interims if ev["text"][-1:] in ".?!"]
        assert all(0 <= ev["stable_chars"] <= len(ev["text"]) for ev in interims)
        assert any(ev["stable_chars"] > 0 for ev in interims)


async def test_pauses_inside_a_sentence_do_not_end_it(pool):
    """Issue 22 item 1: the reading's first 10.5 s ("It was the best of times, ... it was the epoch of belief,") has
    a pause at every comma that ends a turn; none of them may gain a full stop ("It was the age of wisdom. It was
    ..."). A real sentence end before it (LibriVox: "... to do for them.") keeps its stop."""
    a = speech.clip("lv-0870")
    part = speech.long_clips()[0].pcm[: int(10.5 * speech.RATE) * 2]  # up to the pause after "belief,"
    printed = a.text + " " + speech.TWO_CITIES[: speech.TWO_CITIES.index("belief,") + len("belief,")]
    up = LocalUpstream(SETTINGS, StreamParams())
    await up.connect()
    task = asyncio.create_task(collect(up))
    await feed(up, silence(0.3) + a.pcm + silence(1.5) + part + silence(1.0))
    await up.close()
    finals = check_turns(await asyncio.wait_for(task, 30))
    text = " ".join(finals)
    spurious, _, missed, _ = speech.sentence_ends(printed, text)
    assert len(finals) >= 4, finals  # the reading's commas did end turns: the case this is about
    assert spurious <= 1 and missed == 0, (spurious, missed, finals)
    assert speech.wer(printed, text) <= 0.1, finals


# ---- estimated word times (issue 22 item 5) -------------------------------------------------------------------


def alignment(ref: list[str], hyp: list[str]) -> dict[int, int]:
    """Reference word index -> the hypothesis word it is aligned with (a match or a substitution)."""
    d = np.zeros((len(ref) + 1, len(hyp) + 1), int)
    d[:, 0], d[0, :] = np.arange(len(ref) + 1), np.arange(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    i, j, pairs = len(ref), len(hyp), {}
    while i > 0 and j > 0:
        if d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif d[i, j] == d[i, j - 1] + 1:
            j -= 1
        else:
            i -= 1
    return pairs


def true_starts(clips: list[speech.Clip], lead: float, pause: float) -> list[float]:
    """Where each clip's speech starts in silence(lead) + speech.joined(clips, pause=pause): joined() trims each
    clip to its speech_bounds with 0.1 s kept each side."""
    out, t = [], lead
    for c in clips:
        on, end = speech.speech_bounds(c.pcm, min_sound=0.1)
        a, b = max(0, int((on - 0.1) * 16000)), min(len(c.pcm) // 2, int((end + 0.1) * 16000))
        out.append(t + on - a / 16000)
        t += (b - a) / 16000 + pause
    return out


def sentence_start_errors(clips: list[speech.Clip], starts: list[float], words: list[dict]) -> list[float]:
    """Per clip: the estimated start of the word said first in it (the first of its reference words that a final
    has) minus the clip's true speech start."""
    hyp, owner = [], []
    for k, w in enumerate(words):
        for piece in speech.normalize(w["word"]):
            hyp.append(piece)
            owner.append(k)
    refs = [speech.normalize(c.ref) for c in clips]
    pairs = alignment([w for r in refs for w in r], hyp)
    errors, base = [], 0
    for r, start in zip(refs, starts):
        first = next(base + k for k in range(len(r)) if base + k in pairs)
        errors.append(words[owner[pairs[first]]]["start"] - start)
        base += len(r)
    return errors


@pytest.mark.parametrize("pause", [0.0, 0.3])
async def test_finals_carry_estimated_word_times_that_follow_the_speech(pool, pause):
    """The five LibriVox clips joined (each a sentence or a clause of one reading, its start known), through the
    real recognizer path (fed as fast as it takes it: long turns). Every final's words are its text's words,
    marked estimated, in order inside the final's span; the word that starts each clip is placed near the clip's
    real start: median within 0.2 s, at most one over 0.5 s (the old interpolation across the turn: median
    0.24 s, up to 0.58 s off, docs/benchmarks.md)."""
    clips = [speech.clip(n) for n in ("lv-0870", "lv-0880", "lv-0890", "lv-0920", "lv-0930")]
    pcm = silence(0.3) + speech.joined(clips, "joined", pause).pcm + silence(1.0)
    up = LocalUpstream(SETTINGS, StreamParams())
    await up.connect()
    task = asyncio.create_task(collect(up))
    await feed(up, pcm, realtime=False)
    await up.close()
    events = await asyncio.wait_for(task, 60)
    check_turns(events)
    finals = [e for e in events if e["type"] == "transcript" and e["final"]]
    words = []
    for f in finals:
        assert [w["word"] for w in f["words"]] == f["text"].split()
        assert all(w["estimated"] is True for w in f["words"])
        times = [t for w in f["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and f["start"] - 0.001 <= times[0] and times[-1] <= f["end"] + 0.001, f
        words += f["words"]
    errors = sentence_start_errors(clips, true_starts(clips, 0.3, pause), words)
    print(f"pause {pause}: {len(finals)} finals, sentence-start errors (s) {[round(e, 2) for e in errors]}")
    # Most runs: every start within 0.15 s. About one run in five (under load) put clip 2's start 0.93 s late,
    # at the pause after its first words: left to look into (docs/benchmarks.md); the median holds regardless.
    seen = (errors, [(f["start"], f["end"], f["text"]) for f in finals])
    assert sorted(abs(e) for e in errors)[len(errors) // 2] <= 0.2 and max(abs(e) for e in errors) <= 1.0, seen
    assert sum(abs(e) > 0.5 for e in errors) <= 1, seen
