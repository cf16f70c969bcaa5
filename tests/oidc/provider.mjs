// A real OAuth2/OIDC provider for the tests: oidc-provider 8.8.1 on a loopback port.
//
//   node provider.mjs   (PORT, KEYS_FILE and CLIENTS_FILE from the environment)
//
// KEYS_FILE holds the signing keys (a JWKS with private parts): the tests write a new one and
// restart the provider to rotate. Access tokens for the resource `urn:media` are JWTs (RS256);
// without a resource they are opaque, which is what introspection is tested with. Prints
// `ready <issuer>` once it listens.
import fs from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(fs.readFileSync(process.env.KEYS_FILE, 'utf8'));
const clients = JSON.parse(fs.readFileSync(process.env.CLIENTS_FILE, 'utf8'));

const provider = new Provider(issuer, {
  clients,
  jwks,
  scopes: ['openid', 'media:read', 'media:write', 'media:delete', 'media:admin'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => (oneOf ? oneOf[0] : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== 'urn:media') throw new Error('unknown resource');
        return {
          scope: 'media:read media:write media:delete media:admin',
          audience: 'urn:media',
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: { ClientCredentials: 600 },
});
provider.proxy = false;
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
