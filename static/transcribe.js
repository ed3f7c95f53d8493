// "Transcribe a file" on the capture page: uploads the chosen file to POST /v1/audio/transcriptions (webapp/batch.py)
// with stream=true, showing the bytes sent (XHR upload progress), then the recognizer's progress and the transcript
// as it is decoded (server-sent events read from the growing response), then the share link and downloads.
// relay_progress=true asks for this page's extra events (caption_relay.progress / .session); OpenAI clients never
// get them. Same origin, with the page's cookies: the login cookie and the owner cookie that lists it in /sessions.

import { parseEvents } from './sse.js';

const $ = (id) => document.getElementById(id);
const el = {
  form: $('transcribe-form'),
  file: $('transcribe-file'),
  start: $('transcribe-start'),
  status: $('transcribe-status'),
  stage: $('transcribe-stage'),
  progress: $('transcribe-progress'),
  percent: $('transcribe-percent'),
  error: $('transcribe-error'),
  text: $('transcribe-text'),
  done: $('transcribe-done'),
  share: $('transcribe-share'),
  downloads: $('transcribe-downloads'),
};
const FORMATS = ['txt', 'srt', 'vtt', 'json'];
// Test hook (read by tests/test_batch.py): the stages the progress bar went through, in order.
const hooks = { stages: [] };
window.__captionRelayTranscribe = hooks;

function setProgress(stage, fraction) {
  el.status.hidden = false;
  el.stage.textContent = stage;
  if (hooks.stages.at(-1) !== stage.split(':')[0]) hooks.stages.push(stage.split(':')[0]);
  const f = Math.max(0, Math.min(1, fraction));
  el.progress.value = f;
  el.percent.textContent = `${Math.round(f * 100)} %`;
}

function showError(message) {
  const p = document.createElement('p');
  p.className = 'message error';
  p.textContent = message;
  el.error.replaceChildren(p);
}

function handle(event, state) {
  if (event.error) {
    showError(event.error.message || 'The transcription failed.');
    state.failed = true;
  } else if (event.type === 'caption_relay.session') {
    state.shareUrl = event.share_url;
  } else if (event.type === 'caption_relay.progress') {
    if (event.duration) setProgress('Recognizing', event.seconds / event.duration);
    else setProgress(`Recognizing: ${Math.round(event.seconds)} s of audio`, 0.5);
  } else if (event.type === 'transcript.text.delta') {
    const span = document.createElement('span');
    span.className = 'final';
    span.textContent = event.delta;
    el.text.append(span);
    el.text.scrollTop = el.text.scrollHeight;
  } else if (event.type === 'transcript.text.done') {
    state.done = true;
    setProgress('Done', 1);
  }
}

function finish(state) {
  el.start.disabled = false;
  if (!state.done || !state.shareUrl) return;
  const url = new URL(state.shareUrl, location.href);
  el.share.href = url.href;
  el.share.textContent = url.href;
  el.downloads.replaceChildren(
    ...FORMATS.flatMap((fmt, i) => {
      const a = document.createElement('a');
      a.href = `${state.shareUrl}/transcript.${fmt}`;
      a.textContent = `.${fmt}`;
      a.setAttribute('download', '');
      return i ? [document.createTextNode(' '), a] : [a];
    }),
  );
  el.done.hidden = false;
}

function upload(file) {
  const state = { offset: 0, done: false, failed: false, shareUrl: null };
  const body = new FormData();
  body.append('file', file, file.name);
  body.append('model', 'caption-relay');
  body.append('response_format', 'json');
  body.append('stream', 'true');
  body.append('relay_progress', 'true');
  const xhr = new XMLHttpRequest();
  xhr.open('POST', '/v1/audio/transcriptions');
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setProgress('Uploading', e.loaded / e.total);
  };
  xhr.upload.onload = () => setProgress('Recognizing', 0);
  const read = () => {
    if (xhr.status !== 200) return;
    const { events, offset } = parseEvents(xhr.responseText, state.offset);
    state.offset = offset;
    for (const event of events) handle(event, state);
  };
  xhr.onprogress = read;
  xhr.onload = () => {
    if (xhr.status !== 200) {
      let message = `The upload failed (${xhr.status}).`;
      try {
        message = JSON.parse(xhr.responseText).error.message || message;
      } catch {
        /* not JSON */
      }
      showError(message);
    } else {
      read();
      if (!state.done && !state.failed) showError('The transcription stopped before it was complete.');
    }
    finish(state);
  };
  xhr.onerror = () => {
    showError('The upload failed: the server could not be reached.');
    finish(state);
  };
  xhr.send(body);
}

if (el.form) {
  el.form.addEventListener('submit', (e) => {
    e.preventDefault();
    const file = el.file.files[0];
    if (!file) return;
    el.start.disabled = true;
    el.error.replaceChildren();
    el.text.replaceChildren();
    el.done.hidden = true;
    setProgress('Uploading', 0);
    upload(file);
  });
}
