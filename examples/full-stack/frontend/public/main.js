// Picks the variant by where the page was loaded: /app/ is served through the
// gateway (variant B), anything else straight from the frontend (variant A).
// Both variants get the same small view to draw on.

const $ = (id) => document.getElementById(id);

const view = {
  variant(text) { $('variant').textContent = text; },
  status(text) { $('status').textContent = text; },
  buttons({ signIn, signOut }) {
    $('sign-in').hidden = !signIn;
    $('sign-out').hidden = !signOut;
  },
  // Shows an HTTP answer: status line, then the body (pretty when JSON).
  async answer(response) {
    const text = await response.text();
    let body = text;
    try { body = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON */ }
    $('answer').textContent = `HTTP ${response.status}\n${body}`;
  },
  error(message) { $('answer').textContent = message; },
  onSignIn(fn) { $('sign-in').addEventListener('click', fn); },
  onSignOut(fn) { $('sign-out').addEventListener('click', fn); },
};

const variant = location.pathname.startsWith('/app/')
  ? await import('./variant-b.js')
  : await import('./variant-a.js');
variant.start(view).catch((err) => view.error(`Error: ${err.message}`));
