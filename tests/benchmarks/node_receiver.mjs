// Reference webhook receiver for tests/benchmarks/webhook_intake.py.
//
//   BENCH_WEBHOOK_SECRET=... node tests/benchmarks/node_receiver.mjs --port 9000
//
// The floor a webhook receiver can reach on this machine: read the body, verify
// X-Hub-Signature-256 with @octokit/webhooks (GitHub's own library), answer 202 — or 401
// when the signature is missing or wrong. Nothing is parsed, stored or fsynced, so it is
// not a like-for-like replacement for Slipway's intake, only the point to compare against.
// Prints one line "listening <port>" on stdout when ready. Listens on 127.0.0.1 only.
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

// The npm packages live in tests/node (one package.json for all the Node test support).
const requireFromTestsNode = createRequire(new URL("../node/package.json", import.meta.url));
const { Webhooks } = await import(
  pathToFileURL(requireFromTestsNode.resolve("@octokit/webhooks")).href
);

const portArg = process.argv.indexOf("--port");
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
const secret = process.env.BENCH_WEBHOOK_SECRET;
if (!secret) {
  process.stderr.write("BENCH_WEBHOOK_SECRET is not set\n");
  process.exit(2);
}

const webhooks = new Webhooks({ secret });

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

const server = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/webhooks/github") {
    answer(res, 404, { error: "not found" });
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", async () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const signature = req.headers["x-hub-signature-256"];
    let ok = false;
    try {
      ok = Boolean(signature) && (await webhooks.verify(body, signature));
    } catch {
      ok = false;
    }
    if (!ok) {
      answer(res, 401, { error: "invalid signature" });
      return;
    }
    answer(res, 202, { delivery: req.headers["x-github-delivery"] ?? null });
  });
});

server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
