"""/v1/realtime's translation layer, in-process and table-driven (webapp/realtime.py): the seed's query string,
the relay's browser events -> Deepgram-v1-style messages, languages per backend, and the log redaction of
`api_key`, and detected languages kept by the stores (an older SQLite file included). The same layer over real
sockets and every backend: tests/test_realtime.py."""
from __future__ import annotations

import sqlite3

import pytest

from test_upstream_messages import W1, W2, run, turninfo
from webapp import config, protocol
from webapp.logs import JsonFormatter, redact
from webapp.protocol import ParamError, StreamParams
from webapp.realtime import Options, Translator, error_message, parse
from webapp.upstreams import language_problem
from webapp.upstreams.aigateway import AIGatewayUpstream
from webapp.upstreams.deepgram import DeepgramUpstream
from webapp.upstreams.flux import model_and_hints

SEED_QUERY = [("model", "deepgram/flux"), ("encoding", "linear16"), ("sample_rate", "16000"),
              ("interim_results", "true")]

# ---- the query string ---------------------------------------------------------------------------

GOOD = [
    ("the seed's own query", SEED_QUERY, StreamParams(interim_words=True), Options(interim_results=True)),
    ("with the key in it", SEED_QUERY + [("api_key", "sk-x")], StreamParams(interim_words=True), Options(True)),
    ("nothing: v1 defaults", [], StreamParams(), Options(interim_results=False)),
    ("nova-3, 8 kHz, finals only", [("model", "deepgram/nova-3"), ("sample_rate", "8000"), ("interim_results", "false")],
     StreamParams(sample_rate=8000), Options(False)),
    ("language and keyterms", [("language", "es-MX"), ("keyterm", "Dios"), ("keyterm", "iglesia")],
     StreamParams(language="es", keyterms=("Dios", "iglesia")), Options()),
    ("v1 switches that change nothing", [("punctuate", "true"), ("smart_format", "false"), ("channels", "1")],
     StreamParams(), Options()),
    ("Flux thresholds", [("eot_threshold", "0.8"), ("eot_timeout_ms", "2000")],
     StreamParams(eot_threshold=0.8, eot_timeout_ms=2000), Options()),
]


@pytest.mark.parametrize("name,query,params,options", GOOD, ids=[c[0] for c in GOOD])
def test_parse_accepts(name, query, params, options):
    assert parse(query) == (params, options)


BAD = [
    ("another encoding", [("encoding", "mulaw")], "encoding must be linear16"),
    ("opus", [("encoding", "opus")], "encoding must be linear16"),
    ("an odd sample rate", [("sample_rate", "11025")], "sample_rate must be one of 8000, 16000"),
    ("a sample rate that is not a number", [("sample_rate", "16k")], "sample_rate must be one of"),
    ("an unknown model", [("model", "whisper-1")], "model must be one of deepgram/flux, deepgram/nova-3"),
    ("interim_results not a boolean", [("interim_results", "yes")], "interim_results must be true or false"),
    ("stereo", [("channels", "2")], "channels must be 1"),
    ("an unknown parameter", [("diarize", "true")], "unknown parameter 'diarize'; allowed:"),
    ("twice", [("sample_rate", "16000"), ("sample_rate", "8000")], "given twice"),
    ("not a language", [("language", "Español!")], "language must be a language code"),
]


@pytest.mark.parametrize("name,query,message", BAD, ids=[c[0] for c in BAD])
def test_parse_refuses_with_a_message_naming_the_parameter(name, query, message):
    with pytest.raises(ParamError) as err:
        parse(query)
    assert message in str(err.value)
    assert "api_key" not in str(err.value)  # the list of allowed parameters never advertises the credential


# ---- events -> messages ---------------------------------------------------------------------------

READY = {"type": "ready", "session_id": "sess1", "backend": "local", "sample_rate": 16000, "share_url": "/s/tok"}
INTERIM = protocol.transcript(0, "Hello wor", False, 0.4, 1.0)
FINAL = protocol.transcript(0, "Hello world.", True, 0.1, 0.9, [W1, W2])
FINAL_UNTIMED = protocol.transcript(1, "Ten of clubs", True, 2.0, 3.2)


def results(transcript, is_final, speech_final, from_finalize, start, duration):
    return {"transcript": transcript, "is_final": is_final, "speech_final": speech_final,
            "from_finalize": from_finalize, "start": start, "duration": duration}


def summary(msg):
    if msg is None or msg["type"] != "Results":
        return msg if msg is None else msg["type"]
    alt = msg["channel"]["alternatives"][0]
    return results(alt["transcript"], msg["is_final"], msg["speech_final"], msg["from_finalize"], msg["start"],
                   msg["duration"])


# (name, options, events in order (a "Finalize" string is the client's command), the message summaries)
CASES = [
    ("interims on request, then the final ends the utterance", Options(interim_results=True),
     [READY, protocol.turn_event(0, "StartOfTurn"), INTERIM, FINAL, protocol.turn_event(0, "EndOfTurn")],
     [None, None, results("Hello wor", False, False, False, 0.4, 0.6), results("Hello world.", True, True, False, 0.1, 0.8),
      None]),
    ("finals only by default (Deepgram v1's interim_results=false)", Options(),
     [READY, INTERIM, FINAL], [None, None, results("Hello world.", True, True, False, 0.1, 0.8)]),
    ("a Finalize's final says from_finalize, not speech_final", Options(interim_results=True),
     [READY, INTERIM, "Finalize", FINAL, FINAL_UNTIMED],
     [None, results("Hello wor", False, False, False, 0.4, 0.6), results("Hello world.", True, False, True, 0.1, 0.8),
      results("Ten of clubs", True, True, False, 2.0, 1.2)]),
    ("a Finalize with no open turn marks nothing", Options(),
     [READY, "Finalize", FINAL], [None, results("Hello world.", True, True, False, 0.1, 0.8)]),
    ("status, gap and notice have no v1 counterpart", Options(),
     [READY, {"type": "status", "state": "reconnecting", "code": "x", "message": "m"},
      {"type": "gap", "start": 1, "end": 2, "message": "m"}, {"type": "notice", "code": "finals_lost", "lost": 1}],
     [None, None, None, None]),
    ("an error, then Metadata at the end", Options(),
     [READY, protocol.error("bad_audio", "odd byte count"), {"type": "closed", "reason": "client_closed"}],
     [None, "Error", "Metadata"]),
    ("a stream refused before it started ends with its Error alone", Options(),
     [protocol.error("capacity", "busy", True, 60.0), {"type": "closed", "reason": "capacity"}], ["Error", None]),
]


@pytest.mark.parametrize("name,options,events,expected", CASES, ids=[c[0] for c in CASES])
def test_events_become_seed_messages(name, options, events, expected):
    t = Translator(options, "flux-general-en")
    got = []
    for e in events:
        if e == "Finalize":
            t.finalize_requested()
        else:
            got.append(summary(t.message(e, duration=3.5)))
    assert got == expected


def test_results_shape_is_deepgram_v1():
    t = Translator(Options(), "flux-general-en")
    t.message(READY)
    msg = t.message(FINAL)
    assert msg["channel_index"] == [0, 1] and msg["metadata"]["request_id"] == "sess1"
    alt = msg["channel"]["alternatives"][0]
    assert alt["words"] == [
        {"word": "hello", "start": 0.1, "end": 0.4, "confidence": 0.9, "punctuated_word": "Hello"},
        {"word": "world", "start": 0.4, "end": 0.9, "confidence": 0.8, "punctuated_word": "world."},
    ]
    assert alt["confidence"] == 0.85


def test_words_without_times_are_spread_over_the_turn():
    """The embedded recognizer gives text and turn times only: words still get start/end, confidence 1.0."""
    alt = Translator(Options(), "m").message(FINAL_UNTIMED)["channel"]["alternatives"][0]
    words = alt["words"]
    assert [w["punctuated_word"] for w in words] == ["Ten", "of", "clubs"]
    assert words[0]["start"] == 2.0 and words[-1]["end"] == 3.2
    assert all(a["end"] <= b["start"] + 1e-9 for a, b in zip(words, words[1:]))
    assert alt["confidence"] == 1.0


def test_detected_languages_ride_on_the_alternative():
    final = {**FINAL, "languages": ["es", "en"]}
    assert Translator(Options(), "m").message(final)["channel"]["alternatives"][0]["languages"] == ["es", "en"]
    assert "languages" not in Translator(Options(), "m").message(FINAL)["channel"]["alternatives"][0]


def test_metadata_names_the_session_its_audio_and_its_share_link():
    t = Translator(Options(), "flux-general-en")
    t.message(READY)
    meta = t.message({"type": "closed", "reason": "client_closed"}, duration=12.34567)
    assert meta["type"] == "Metadata" and meta["request_id"] == "sess1" and meta["duration"] == 12.346
    assert meta["share_url"] == "/s/tok" and meta["close_reason"] == "client_closed" and meta["channels"] == 1
    assert meta["created"].endswith("Z")


ERRORS = [
    ("unauthorized", None, "invalid_key", False),
    ("rate_limited", 7.0, "rate_limited", True),
    ("quota_exceeded", 3600, "scope_exceeded", True),
    ("bad_request", None, "invalid_request_error", False),
    ("unsupported_language", None, "invalid_request_error", False),
    ("upstream_unavailable", None, "api_error", True),
]


@pytest.mark.parametrize("code,retry_after,kind,retryable", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors_in_both_seed_shapes(code, retry_after, kind, retryable):
    msg = error_message(code, "What to do.", retry_after)
    assert (msg["type"], msg["code"], msg["description"]) == ("Error", code, "What to do.")  # Deepgram's reading
    assert msg["error"] == {"message": "What to do.", "type": kind, "code": code, "param": None}  # the SDK's
    assert msg["retryable"] is retryable and msg.get("retry_after") == retry_after


# ---- languages ------------------------------------------------------------------------------------

HINTS = [
    ("flux-general-en", "", ("flux-general-en", [])),
    ("flux-general-en", "en", ("flux-general-en", [])),
    ("flux-general-en", "es", ("flux-general-multi", ["es"])),
    ("flux-general-en", "multi", ("flux-general-multi", [])),
    ("flux-general-multi", "en", ("flux-general-multi", ["en"])),
    ("flux-general-multi", "", ("flux-general-multi", [])),
]


@pytest.mark.parametrize("model,language,expected", HINTS)
def test_flux_model_and_hints(model, language, expected):
    assert model_and_hints(model, language) == expected


def test_the_flux_url_repeats_language_hint():
    settings = config.load({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "k", "DATA_DIR": "/tmp/unused-cr"})
    url = DeepgramUpstream(settings, StreamParams(language="fr")).url()
    assert "model=flux-general-multi" in url and url.count("language_hint=fr") == 1


LANGUAGES = [
    ("local", "en", None),
    ("local", "", None),
    ("local", "es", "English only"),
    ("local", "multi", "English only"),
    ("deepgram", "es", None),
    ("deepgram", "multi", None),
    ("deepgram", "zu", "does not transcribe language 'zu'"),
    ("aigateway", "zu", None),  # the gateway decides
]


@pytest.mark.parametrize("backend,language,problem", LANGUAGES)
def test_which_backend_takes_which_language(backend, language, problem):
    env = {"STT_BACKEND": backend, "DEEPGRAM_API_KEY": "k", "AIGATEWAY_API_KEY": "k", "DATA_DIR": "/tmp/unused-cr"}
    said = language_problem(config.load(env), language)
    assert (said is None) if problem is None else (problem in said)


def test_upstreams_carry_detected_languages_on_finals():
    flux = run(DeepgramUpstream, [turninfo("StartOfTurn", "Hola", [W1], languages=["es"]),
                                  turninfo("EndOfTurn", "Hola mundo.", [W1, W2], languages=["es", "en"])])
    assert [e.get("languages") for e in flux if e["type"] == "transcript"] == [None, ["es", "en"]]
    v1 = {"type": "Results", "start": 0.0, "duration": 1.0, "is_final": True, "speech_final": True,
          "channel": {"alternatives": [{"transcript": "Hola", "words": [], "languages": ["es"]}]}}
    assert [e.get("languages") for e in run(AIGatewayUpstream, [v1]) if e["type"] == "transcript" and e["final"]] \
        == [["es"]]
    junk = run(DeepgramUpstream, [turninfo("StartOfTurn", "x"), turninfo("EndOfTurn", "x", languages="es")])
    assert "languages" not in junk[-2]  # not a list of codes: left out


# ---- the key stays out of the logs ----------------------------------------------------------------

def test_api_key_is_redacted_wherever_a_url_carries_it():
    line = 'WebSocket /v1/realtime?model=deepgram/flux&api_key=sk-aig-secret123&interim_results=true" [accepted]'
    assert "sk-aig-secret123" not in redact(line) and "api_key=[redacted]" in redact(line)
    import logging
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "%s", ("/v1/realtime?API_KEY=abcd1234",), None)
    assert "abcd1234" not in JsonFormatter().format(record)


# ---- detected languages are stored with the turn ------------------------------------------------------

OLD_TURNS = """CREATE TABLE turns (session_id TEXT NOT NULL, seq INTEGER NOT NULL, turn INTEGER, text TEXT NOT NULL,
    start REAL, "end" REAL, words TEXT NOT NULL, PRIMARY KEY (session_id, seq)) WITHOUT ROWID"""


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite of an older version"])
async def test_stores_keep_detected_languages(kind, tmp_path):
    from webapp.store import MemoryStore, SqliteStore
    if kind == "memory":
        store = MemoryStore()
    else:
        path = tmp_path / "sessions.sqlite3"
        if kind != "sqlite":  # a file written before turns had languages, with a turn in it
            with sqlite3.connect(path) as db:
                db.execute(OLD_TURNS)
                db.execute("INSERT INTO turns VALUES ('old', 0, 0, 'Before.', 0.0, 1.0, '[]')")
        store = SqliteStore(path)
        await store.start()
    try:
        await store.append_final("s", 0, {"turn": 0, "text": "Hola.", "start": 0.0, "end": 1.0, "words": [],
                                          "languages": ["es", "en"]})
        await store.append_final("s", 1, {"turn": 1, "text": "Hi.", "start": 1.0, "end": 2.0, "words": []})
        turns = await store.get_turns("s")
        assert [t.get("languages") for t in turns] == [["es", "en"], None]
        if kind == "sqlite of an older version":
            assert "languages" not in (await store.get_turns("old"))[0]
    finally:
        if kind != "memory":
            await store.close()
