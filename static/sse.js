// Server-sent events read from a response body that grows (an XHR's responseText): DOM-free, tested in node.

// The events completed in `body` since `offset` (each `data:` block parsed as JSON; others skipped), and the new
// offset. An event whose blank line has not arrived yet stays for the next call.
export function parseEvents(body, offset) {
  const events = [];
  let end;
  while ((end = body.indexOf('\n\n', offset)) !== -1) {
    const block = body.slice(offset, end);
    offset = end + 2;
    const data = block
      .split('\n')
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).trimStart())
      .join('\n');
    if (data) {
      try {
        events.push(JSON.parse(data));
      } catch {
        /* not JSON: not ours */
      }
    }
  }
  return { events, offset };
}
