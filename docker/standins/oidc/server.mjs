// Offline test OpenID Connect provider for the MLflow bundle (oidc-provider, panva).
// Plain HTTP on purpose: it only listens behind loopback-only port mappings in tests and trials.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import Provider, { interactionPolicy } from 'oidc-provider';
// The in-memory store oidc-provider ships; state (sessions, grants, codes) is lost on restart.
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';
import { exportJWK, generateKeyPair, jwtVerify, createLocalJWKSet } from 'jose';

const env = process.env;
const fail = (msg) => { console.error(`oidc: ${msg}`); process.exit(1); };
const log = (msg) => console.log(`${new Date().toISOString()} oidc: ${msg}`);
for (const name of ['OIDC_ISSUER', 'OIDC_USER_PASSWORD', 'OIDC_COOKIE_KEY']) {
  if (!env[name]) fail(`environment variable ${name} is required`);
}
const ISSUER = env.OIDC_ISSUER;
const PORT = Number(env.PORT || 9000);
const SEED_FILE = env.OIDC_SEED_FILE || '/etc/oidc/seed.json';
const AUDIENCE = env.OIDC_AUDIENCE || 'mlflow';
const TTL = Number(env.OIDC_ACCESS_TOKEN_TTL || 300);
if (!Number.isInteger(TTL) || TTL <= 0) fail('OIDC_ACCESS_TOKEN_TTL must be a positive integer (seconds)');
// Resource indicators must be absolute URIs; a bare audience such as "mlflow" becomes "urn:mlflow".
const RESOURCE = URL.canParse(AUDIENCE) ? AUDIENCE : `urn:${AUDIENCE}`;
const SCOPES = 'openid email profile groups offline_access';
const sha256 = (s) => createHash('sha256').update(String(s)).digest();
const PASSWORD_HASH = sha256(env.OIDC_USER_PASSWORD);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// ---- seed file: re-read whenever its mtime/size/inode changes ----
function expand(value) {
  if (typeof value === 'string') {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name) => {
      if (env[name] === undefined) throw new Error(`seed: environment variable ${name} is not set`);
      return env[name];
    });
  }
  if (Array.isArray(value)) return value.map(expand);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expand(v)]));
  return value;
}

let seed = null;
let seedStamp = '';
function loadSeed() {
  const st = statSync(SEED_FILE);
  const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
  if (seed && stamp === seedStamp) return seed;
  const raw = expand(JSON.parse(readFileSync(SEED_FILE, 'utf8')));
  const users = new Map((raw.users || []).map((u) => [u.username, u]));
  const clients = new Map();
  for (const { client_secret_env: secretEnv, groups, access_token_ttl: ttl, ...meta } of raw.clients || []) {
    const grantTypes = meta.grant_types || ['authorization_code'];
    const md = { redirect_uris: [], response_types: grantTypes.includes('authorization_code') ? ['code'] : [], ...meta, grant_types: grantTypes };
    if (!secretEnv) {
      md.token_endpoint_auth_method = 'none'; // public client; PKCE is required for every client below
    } else if (env[secretEnv]) {
      md.client_secret = env[secretEnv];
    } else {
      log(`client ${meta.client_id} refused: its secret variable ${secretEnv} is not set`);
      continue;
    }
    clients.set(meta.client_id, { metadata: md, groups: groups || [], ttl: ttl || TTL });
  }
  seed = { users, clients, otherAudiences: raw.other_audiences || [] };
  seedStamp = stamp;
  log(`seed loaded from ${SEED_FILE}: ${users.size} users, ${clients.size} clients`);
  return seed;
}
function currentSeed() {
  try { return loadSeed(); } catch (err) {
    if (!seed) throw err;
    log(`seed reload failed, keeping the previous one: ${err.message}`);
    return seed;
  }
}
try { loadSeed(); } catch (err) { fail(`cannot load seed file ${SEED_FILE}: ${err.message}`); }

// Clients come from the seed through the adapter, so removals take effect on the next request.
const memory = createMemoryAdapter();
const seedClients = {
  async find(id) { return currentSeed().clients.get(id)?.metadata; },
  async upsert() {}, async destroy() {}, async consume() {}, async findByUid() {}, async findByUserCode() {}, async revokeByGrantId() {},
};

const userClaims = (u) => ({
  sub: u.username, preferred_username: u.username, email: u.email, email_verified: true, name: u.name, groups: u.groups || [],
});
async function findAccount(ctx, id) {
  const user = currentSeed().users.get(id);
  return user && { accountId: id, claims: async () => userClaims(user) };
}

// Signing key: generated in memory at start; tokens issued before a restart no longer verify.
const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: randomUUID(), alg: 'RS256', use: 'sig' };
const { d, p, q, dp, dq, qi, ...publicJwk } = jwk;
const publicJwks = createLocalJWKSet({ keys: [publicJwk] });

// A browser session whose user was removed from the seed must log in again (stock policy would not ask).
const policy = interactionPolicy.base();
policy.get('login').checks.push(new interactionPolicy.Check('account_removed', 'the signed-in user no longer exists',
  (ctx) => Boolean(ctx.oidc.session.accountId && !ctx.oidc.account)));

// A client's `access_token_ttl` (seed) overrides OIDC_ACCESS_TOKEN_TTL for its access tokens.
const clientTTL = (client) => currentSeed().clients.get(client?.clientId)?.ttl || TTL;
const resourceServer = { audience: AUDIENCE, scope: SCOPES, accessTokenFormat: 'jwt', accessTokenTTL: TTL, jwt: { sign: { alg: 'RS256' } } };

const provider = new Provider(ISSUER, {
  adapter: (name) => (name === 'Client' ? seedClients : memory(name)),
  findAccount,
  jwks: { keys: [jwk] },
  cookies: {
    keys: [env.OIDC_COOKIE_KEY], // signs the session/interaction cookies
    // No "secure" flag: the provider is served over plain HTTP on loopback.
    long: { signed: true, httpOnly: true, sameSite: 'lax' },
    short: { signed: true, httpOnly: true, sameSite: 'lax' },
  },
  scopes: SCOPES.split(' '),
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username'], groups: ['groups'] },
  conformIdTokenClaims: false, // the ID token carries every claim of the granted scopes
  responseTypes: ['code'],
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 accepts
  ttl: { AccessToken: (ctx, token, client) => clientTTL(client), ClientCredentials: (ctx, token, client) => clientTTL(client), IdToken: TTL, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 86400, RefreshToken: 86400 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Requests without a resource parameter get the MLflow resource, so every access token is a JWT with aud=OIDC_AUDIENCE.
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, indicator, client) => {
        const accessTokenTTL = clientTTL(client);
        if (indicator === RESOURCE || indicator === AUDIENCE) return { ...resourceServer, accessTokenTTL };
        // Other APIs of the same provider (seed `other_audiences`): their tokens must not open MLflow.
        const other = indicator.replace(/^urn:/, '');
        if (currentSeed().otherAudiences.includes(other)) return { ...resourceServer, accessTokenTTL, audience: other };
        throw new Provider.errors.InvalidTarget(`unknown resource ${indicator}`);
      },
    },
    rpInitiatedLogout: {
      enabled: true,
      // No confirmation page: the form (with logout=yes) submits itself.
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><head><title>Signing out</title></head><body>${form.replace('</form>', '<input type="hidden" name="logout" value="yes"/><noscript><button type="submit">Sign out</button></noscript></form>')}<script>document.forms[0].submit()</script></body></html>`;
      },
      postLogoutSuccessSource: async (ctx) => { ctx.body = '<!DOCTYPE html><html><body><p>Signed out.</p></body></html>'; },
    },
  },
  // JWT access tokens carry the identity claims; client_credentials tokens carry the client's groups.
  extraTokenClaims: async (ctx, token) => {
    if (token.accountId) {
      const user = currentSeed().users.get(token.accountId);
      if (user) { const { sub, ...claims } = userClaims(user); return claims; }
      return undefined;
    }
    return { preferred_username: token.clientId, groups: currentSeed().clients.get(token.clientId)?.groups || [] };
  },
  // Consent is granted automatically for whatever scopes, claims and resources were requested.
  loadExistingGrant: async (ctx) => {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    const grant = (grantId && await oidc.provider.Grant.find(grantId))
      || new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
    if (oidc.requestParamClaims) grant.addOIDCClaims([...oidc.requestParamClaims]);
    for (const indicator of Object.keys(oidc.resourceServers || {})) grant.addResourceScope(indicator, oidc.params.scope || '');
    await grant.save();
    return grant;
  },
  interactions: { policy, url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><body><h1>${esc(out.error)}</h1><p>${esc(out.error_description)}</p></body></html>`;
  },
});
provider.proxy = false; // clients talk to it directly; X-Forwarded-* headers are not trusted

const loginPage = (uid, error, username = '') => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign in</title></head><body>
<h1>Sign in</h1>${error ? `<p class="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}">
<label>Username <input name="username" value="${esc(username)}" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button></form></body></html>`;

async function readForm(req) {
  let body = '';
  for await (const chunk of req) { body += chunk; if (body.length > 10000) break; }
  return new URLSearchParams(body);
}

// Userinfo for JWT access tokens: stock oidc-provider refuses tokens that carry an audience at userinfo.
async function jwtUserinfo(ctx) {
  const token = (ctx.get('authorization').match(/^Bearer\s+(\S+)$/i) || [])[1];
  if (!token || token.split('.').length !== 3) return false;
  let payload;
  try {
    ({ payload } = await jwtVerify(token, publicJwks, { issuer: ISSUER, audience: AUDIENCE, typ: 'at+jwt' }));
  } catch (err) {
    payload = null;
  }
  const user = payload && String(payload.scope || '').split(' ').includes('openid') && currentSeed().users.get(payload.sub);
  if (!user) {
    ctx.status = 401;
    ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
    ctx.body = { error: 'invalid_token', error_description: 'invalid or expired access token, or unknown user' };
    return true;
  }
  const scopes = new Set(payload.scope.split(' '));
  const claims = userClaims(user);
  ctx.set('Cache-Control', 'no-store');
  ctx.body = Object.fromEntries(Object.entries(claims).filter(([k]) => k === 'sub'
    || (scopes.has('email') && k.startsWith('email')) || (scopes.has('profile') && ['name', 'preferred_username'].includes(k))
    || (scopes.has('groups') && k === 'groups')));
  return true;
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/me' && await jwtUserinfo(ctx)) return;
  const m = ctx.path.match(/^\/interaction\/([\w-]+)$/);
  if (!m) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { uid, prompt, params } = details;
  if (prompt.name === 'consent') {
    // Only reached with prompt=consent (e.g. for offline_access): grant what is missing, no page.
    const grant = (details.grantId && await provider.Grant.find(details.grantId))
      || new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) grant.addResourceScope(indicator, scopes.join(' '));
    const result = { consent: { grantId: await grant.save() } };
    ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true }));
    return;
  }
  if (prompt.name !== 'login') { ctx.status = 400; ctx.body = `unsupported prompt ${prompt.name}`; return; }
  if (ctx.method === 'GET') { ctx.type = 'html'; ctx.body = loginPage(uid); return; }
  if (ctx.method !== 'POST') { ctx.status = 405; return; }
  const form = await readForm(ctx.req);
  const username = form.get('username') || '';
  const user = currentSeed().users.get(username);
  const ok = timingSafeEqual(sha256(form.get('password') || ''), PASSWORD_HASH);
  if (!user || !ok) {
    log(`login failed user=${JSON.stringify(username)} client=${params.client_id} reason=${user ? 'bad password' : 'unknown user'}`);
    ctx.status = 401; ctx.type = 'html'; ctx.body = loginPage(uid, 'Invalid username or password.', username);
    return;
  }
  log(`login ok user=${username} client=${params.client_id}`);
  ctx.status = 303;
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: username } }, { mergeWithLastSubmission: false }));
});

provider.on('grant.success', (ctx) => {
  const { client, entities } = ctx.oidc;
  const sub = entities.Account?.accountId || entities.AccessToken?.accountId || client?.clientId;
  log(`token issued grant_type=${ctx.oidc.params?.grant_type} client=${client?.clientId} sub=${sub}`);
});
provider.on('grant.error', (ctx, err) => log(`token refused client=${ctx.oidc?.client?.clientId || ctx.oidc?.params?.client_id || '(unauthenticated)'} error=${err.error}: ${err.error_description}`));
provider.on('server_error', (ctx, err) => log(`server error: ${err.stack}`));

provider.listen(PORT, () => log(`listening on port ${PORT}, issuer ${ISSUER}, audience ${AUDIENCE} (resource ${RESOURCE}), token TTL ${TTL}s`));
// PID 1 in a container: exit promptly on stop signals (state is in memory only anyway).
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
