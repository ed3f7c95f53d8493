"""Headless Debian Chromium driven by Playwright, with a WAV file as the microphone.
The page's CSP forbids eval, so waits use selectors and
locator assertions, never wait_for_function."""
from __future__ import annotations

import contextlib
import shutil
import wave
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None)


def chromium_args(wav: Path | None) -> list[str]:
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={Path(wav).resolve()}%noloop")
    return args


@contextlib.contextmanager
def browser(wav: Path | None, fake_ui: bool = True):
    """A Chromium whose microphone plays `wav` once (then digital silence)."""
    assert CHROMIUM, "Debian's chromium is missing: run ./scripts/test, which installs it"
    args = chromium_args(wav)
    if not fake_ui:
        args.remove("--use-fake-ui-for-media-stream")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def read_wav_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1 and w.getframerate() == 16000
        return w.readframes(w.getnframes())


def hooks(page: Page, frame=None) -> dict:
    return (frame or page).evaluate("() => JSON.parse(JSON.stringify(window.__captionRelay))")


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None
