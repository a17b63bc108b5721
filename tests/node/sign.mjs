// Sign a webhook body with GitHub's own library, as an independent check of our signer.
//
//   node tests/node/sign.mjs SECRET < BODY    ->  prints `sha256=<hex>` (no newline)
//
// `sign()` from @octokit/webhooks-methods only accepts a string, so the raw stdin bytes are
// decoded as strict UTF-8 (keeping any BOM): the HMAC then covers exactly the bytes given,
// and a body that is not valid UTF-8 is an error rather than a silently different digest.
import { sign } from "@octokit/webhooks-methods";

const secret = process.argv[2];
if (!secret) {
  process.stderr.write("usage: node sign.mjs SECRET < BODY\n");
  process.exit(2);
}

const chunks = [];
for await (const chunk of process.stdin) {
  chunks.push(chunk);
}
const body = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
  Buffer.concat(chunks),
);

process.stdout.write(await sign(secret, body));
