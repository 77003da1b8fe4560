// A real OpenID provider for keyward-auth's OIDC sign-in tests: `oidc-provider`
// (OpenID Certified), configured here and nothing imitated. Only the interaction
// pages (login and consent screens, which every deployment writes itself) are
// replaced by a handler that signs in the account named by `login_hint` and grants
// what the client asked for, so a test can play the browser without a person.
//
// Configuration comes from the environment:
//   OIDC_PROVIDER_PORT    port to listen on, 127.0.0.1 only (default 0: any free port)
//   OIDC_PROVIDER_CONFIG  JSON: { "clients": [oidc-provider client metadata...],
//                                 "accounts": [{ "id", "email", "email_verified" }...] }
// When listening, it prints its issuer URL (e.g. http://127.0.0.1:41234) as its first
// line on stdout; the test reads that line. It exits when stdin closes, so it does
// not outlive the test that started it.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const config = JSON.parse(process.env.OIDC_PROVIDER_CONFIG ?? '{}');
const clients = config.clients ?? [];
const accounts = new Map((config.accounts ?? []).map((a) => [a.id, a]));
const port = Number(process.env.OIDC_PROVIDER_PORT ?? 0);

// A fresh signing key per run: the relying party must fetch it through the JWKS
// endpoint, as it does with a real provider.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    // Put the email claims in the ID token (as Google does) rather than only behind
    // the userinfo endpoint.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    pkce: { required: () => true },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(_ctx, id) {
      const account = accounts.get(id);
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: account.email, email_verified: account.email_verified };
        },
      };
    },
  });

  // The interaction pages: sign in the `login_hint` account, then grant consent.
  provider.use(async (ctx, next) => {
    if (ctx.method !== 'GET' || !ctx.path.startsWith('/interaction/')) {
      return next();
    }
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params, session } = details;
    let result;
    if (prompt.name === 'login') {
      if (!accounts.has(params.login_hint)) {
        ctx.status = 400;
        ctx.body = 'unknown login_hint';
        return undefined;
      }
      result = { login: { accountId: params.login_hint } };
    } else if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      result = { consent: { grantId: await grant.save() } };
    } else {
      ctx.status = 400;
      ctx.body = `unexpected prompt ${prompt.name}`;
      return undefined;
    }
    ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true }));
    return undefined;
  });

  server.on('request', provider.callback());
  process.stdout.write(`${issuer}\n`);
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
