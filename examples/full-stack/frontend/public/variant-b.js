// Variant B: the gateway signs the user in and keeps the tokens server-side.
// This page is served through the gateway, so its API calls are same-origin
// and carry the gateway's session cookie; the browser never sees a token.
// Without a session the gateway answers the API call with 401 JSON.

export async function start(view) {
  view.variant('Variant B: the gateway signs in and keeps the tokens; the page has only a cookie.');
  view.onSignIn(() => location.assign('/app/login'));
  view.onSignOut(() => location.assign('/app/logout'));

  const response = await fetch('/app/api/whoami', { headers: { accept: 'application/json' } });
  const signedIn = response.ok;
  view.status(signedIn ? 'signed in (session held by the gateway)' : 'signed out');
  view.buttons({ signIn: !signedIn, signOut: signedIn });
  await view.answer(response);
}
