// Variant A: the SPA signs the user in itself (authorization code + PKCE as
// a public client), keeps the tokens in memory only, and calls the API
// through the gateway with `Authorization: Bearer`. The gateway checks the
// token by introspection and adds CORS headers for this origin.

// The tokens of this page load; a reload forgets them.
let tokens = null;

// What survives the trip to the provider and back: verifier, state, nonce.
const PENDING = 'demo-pending-sign-in';

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const random = () => b64url(crypto.getRandomValues(new Uint8Array(32)));

export async function start(view) {
  view.variant('Variant A: the SPA signs in and sends the access token to the gateway.');
  const config = await (await fetch('/config.json')).json();
  const provider = await (await fetch(config.discovery)).json();
  const redirectUri = `${location.origin}/`;

  view.onSignIn(async () => {
    const verifier = random();
    const pending = { verifier, state: random(), nonce: random() };
    sessionStorage.setItem(PENDING, JSON.stringify(pending));
    const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
    location.assign(`${provider.authorization_endpoint}?${new URLSearchParams({
      client_id: config.clientId,
      response_type: 'code',
      redirect_uri: redirectUri,
      scope: config.scope,
      state: pending.state,
      nonce: pending.nonce,
      code_challenge: challenge,
      code_challenge_method: 'S256',
    })}`);
  });

  view.onSignOut(() => {
    const idToken = tokens?.id_token;
    tokens = null;
    const params = { client_id: config.clientId, post_logout_redirect_uri: redirectUri };
    if (idToken) params.id_token_hint = idToken;
    location.assign(`${provider.end_session_endpoint}?${new URLSearchParams(params)}`);
  });

  // Back from the provider: check the answer, redeem the code.
  const query = new URLSearchParams(location.search);
  let failure = null;
  if (query.has('code') || query.has('error')) {
    history.replaceState(null, '', redirectUri);
    try {
      tokens = await finishSignIn(query, provider, config, redirectUri);
    } catch (err) {
      failure = `sign-in failed: ${err.message}`;
    }
  }

  // Call the API, with the token when there is one.
  view.status(tokens ? 'signed in (token in this page\'s memory)' : failure ?? 'signed out');
  view.buttons({ signIn: !tokens, signOut: !!tokens });
  const headers = tokens ? { authorization: `Bearer ${tokens.access_token}` } : {};
  await view.answer(await fetch(config.api, { headers }));
}

async function finishSignIn(query, provider, config, redirectUri) {
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  sessionStorage.removeItem(PENDING);
  if (query.has('error')) throw new Error(`the provider answered ${query.get('error')}`);
  if (!pending || query.get('state') !== pending.state) throw new Error('unexpected state');
  if (query.has('iss') && query.get('iss') !== provider.issuer) throw new Error('unexpected issuer');

  const response = await fetch(provider.token_endpoint, {
    method: 'POST',
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: query.get('code'),
      redirect_uri: redirectUri,
      client_id: config.clientId,
      code_verifier: pending.verifier,
    }),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`token endpoint: ${answer.error}`);

  // The ID token came straight from the provider over the token endpoint;
  // its nonce ties it to this sign-in.
  const claims = JSON.parse(atob(answer.id_token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  if (claims.nonce !== pending.nonce) throw new Error('unexpected nonce');
  return answer;
}
