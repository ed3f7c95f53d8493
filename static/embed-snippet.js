// The snippet page's Copy button (the page's CSP allows no inline script).
const code = document.getElementById('snippet');
const button = document.getElementById('copy');

button.addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = 'Copied';
  } catch {
    // Clipboard refused (no focus, insecure page): select the tag so Ctrl+C copies it.
    const range = document.createRange();
    range.selectNodeContents(code);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = 'Press Ctrl+C';
  }
  setTimeout(() => { button.textContent = 'Copy'; }, 1500);
});
