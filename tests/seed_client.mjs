// The seed's (AIgateway's) own realtime client snippet, from https://aigateway.sh/models/deepgram/flux
// (quoted in /work/shared/docs/protocols.md, section 4), run against the relay by tests/test_realtime.py:
//
//   node --experimental-websocket tests/seed_client.mjs <relay ws base, e.g. ws://127.0.0.1:8000> <key> <pcm file>
//
// or, where node has no WebSocket (Debian 12's node 18), as a module in headless Chromium with `globalThis.SEED`
// = {relay, key, pcm: base64} set first.
//
// Between the BEGIN/END lines the snippet is as published except for the host in its URL. Its two placeholders
// are filled in below it, the way the snippet says: "stream raw audio frames (linear16 PCM @ 16 kHz)" (80 ms
// frames at real-time pace, once the socket is open) and "...then end the stream" with the snippet's own
// CloseStream line. Its console.log lines (transcript, is_final) go to stdout; the close code to stderr.
const inNode = typeof process !== "undefined" && Boolean(process.versions?.node);
let RELAY, AIGATEWAY_API_KEY, pcm;
if (inNode) {
  const { readFileSync } = await import("node:fs");
  const [relay, key, file] = process.argv.slice(2);
  [RELAY, AIGATEWAY_API_KEY, pcm] = [relay, key, new Uint8Array(readFileSync(file))];
  setTimeout(() => {
    console.error("timeout");
    process.exit(2);
  }, 60000).unref();
} else {
  const seed = globalThis.SEED;
  [RELAY, AIGATEWAY_API_KEY] = [seed.relay, seed.key];
  pcm = Uint8Array.from(atob(seed.pcm), (c) => c.charCodeAt(0));
}

// ---- BEGIN the seed's snippet (host changed) ----
// Realtime WebSocket. Browsers pass the key as ?api_key=
const ws = new WebSocket(
  RELAY + "/v1/realtime?model=deepgram/flux&encoding=linear16&sample_rate=16000&interim_results=true&api_key=" + AIGATEWAY_API_KEY,
);
ws.onmessage = (e) => {
  const msg = JSON.parse(e.data);
  if (msg.type === "Results") {
    console.log(msg.channel.alternatives[0].transcript, msg.is_final);
  }
};
// ---- END the seed's snippet ----

const FRAME = 2560; // 80 ms of 16 kHz 16-bit mono
ws.onopen = async () => {
  for (let i = 0; i < pcm.length; i += FRAME) {
    const pcmChunk = pcm.subarray(i, i + FRAME);
    // stream raw audio frames (linear16 PCM @ 16 kHz):
    ws.send(pcmChunk);
    await new Promise((resolve) => setTimeout(resolve, 80)); // real-time pace, as a microphone sends
  }
  // ...then end the stream:
  ws.send(JSON.stringify({ type: "CloseStream" }));
};
ws.onclose = (e) => {
  console.error(`close ${e.code}`);
};
