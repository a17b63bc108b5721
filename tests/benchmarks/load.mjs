// Load generator for tests/benchmarks/webhook_intake.py: autocannon (programmatic API),
// one process, one thread — lean enough to share a 2-core machine with the server.
//
//   node tests/benchmarks/load.mjs CONFIG_JSON      -> prints one JSON object on stdout
//
// CONFIG_JSON: {"url": "http://127.0.0.1:PORT/webhooks/github", "bodyFile": PATH,
//   "headers": {...}, "duration": 30, "rate": 200 (0 = no cap), "connections": 50,
//   "pacing": "even" | "autocannon", "timeout": 10, "warmup": 0 (s), "warmupRate": 200,
//   "handshake": false}
// With "handshake", it prints {"phase": "ready", ...} after the warm-up and waits for a line
// "go" on stdin before the measured run, so the caller can take its "before" readings.
//
// Every request carries a fresh X-GitHub-Delivery (a UUID, set in setupRequest); the body
// and its X-Hub-Signature-256 stay fixed, since the signature covers only the body.
//
// Pacing. autocannon 9's own rate limit (`overallRate` / `connectionRate`) is a per-connection
// budget per second: at each 1 s tick every connection sends its share back to back, then
// idles until the next tick. That is a burst at the top of every second, not a fixed rate,
// and the p99 it yields is the time to drain the burst. "even" (the default) keeps
// autocannon's connections, parser and counters but takes over the client's send step
// (`setupClient`): connection i of C sends at t0 + i/R + k*C/R, so the server sees one
// request every 1/R seconds. When a connection is still waiting for its previous answer at
// its next slot, it sends as soon as the answer arrives, and `schedule_latency_ms` counts
// that wait too (latency from the intended send time: coordinated omission is not hidden).
// "autocannon" passes `overallRate` through unchanged, for comparison.
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";

const requireFromTestsNode = createRequire(new URL("../node/package.json", import.meta.url));
const autocannon = requireFromTestsNode("autocannon");
const autocannonVersion = requireFromTestsNode("autocannon/package.json").version;

const config = JSON.parse(process.argv[2] ?? "{}");
const {
  url,
  bodyFile,
  headers = {},
  duration = 30,
  rate = 0,
  connections = rate ? 50 : 32,
  pacing = "even",
  timeout = 10,
  warmup = 0, // s, unmeasured, before the measured run
  warmupRate = rate > 0 ? rate : 200,
  handshake = false, // after warm-up print {"phase": "ready"}, wait for "go" on stdin
} = config;
if (!url || !bodyFile) {
  process.stderr.write("usage: node load.mjs '{\"url\": ..., \"bodyFile\": ...}'\n");
  process.exit(2);
}
const body = readFileSync(bodyFile);

// One measured run. Everything it counts lives here, so a warm-up run counts apart.
function makePhase(rate, connections) {
  const stats = {
    serviceLatencies: [], // ms, 2xx only: from the moment the request was written
    scheduleLatencies: [], // ms, 2xx only: from the moment it was due (= the above without a rate)
    statusCounts: {},
    sent: 0,
    responses: 0,
    maxSendLag: 0,
  };
  const evenPacing = rate > 0 && pacing === "even";
  const interval = rate > 0 ? 1000 / rate : 0; // ms between two requests, all connections together
  let t0 = null;
  let clientIndex = 0;

  function setupClient(client) {
    const index = clientIndex++;
    const send = client._doRequest; // Client.prototype._doRequest
    const inFlight = []; // [due, sentAt] per request written, oldest first (pipelining 1)
    let nextDue = null;
    let timer = null;

    const write = (due) => {
      if (client.destroyed) return;
      const before = client.reqsMade;
      const now = performance.now();
      send.call(client);
      if (client.reqsMade > before) {
        stats.sent++;
        inFlight.push([Math.min(due ?? now, now), now]); // a timer may fire a little early
        if (due !== null) stats.maxSendLag = Math.max(stats.maxSendLag, now - due);
      }
    };

    if (evenPacing) {
      client.rate = 0; // no 1 s budget: read before setupClient, its interval is armed after
      if (t0 === null) t0 = performance.now() + 20; // let the connections open first
      nextDue = t0 + index * interval;
      client._doRequest = function pacedRequest() {
        if (client.destroyed) return;
        const due = nextDue;
        nextDue += connections * interval;
        const wait = due - performance.now();
        if (wait <= 0) {
          write(due);
        } else {
          timer = setTimeout(() => {
            timer = null;
            write(due);
          }, wait);
        }
      };
    } else {
      client._doRequest = function countedRequest() {
        write(null);
      };
    }

    client.on("response", (statusCode) => {
      const now = performance.now();
      const entry = inFlight.shift();
      stats.responses++;
      stats.statusCounts[statusCode] = (stats.statusCounts[statusCode] ?? 0) + 1;
      if (entry && statusCode >= 200 && statusCode < 300) {
        stats.serviceLatencies.push(now - entry[1]);
        stats.scheduleLatencies.push(now - entry[0]);
      }
    });
    client.on("done", () => {
      if (timer) clearTimeout(timer);
    });
    // a dropped connection loses what was in flight on it
    client.on("connError", () => inFlight.splice(0));
    client.on("timeout", () => inFlight.splice(0));
  }

  return { setupClient, stats };
}

function percentiles(values) {
  if (values.length === 0) return { p50: null, p90: null, p99: null, max: null, mean: null };
  const sorted = Float64Array.from(values).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  const round = (x) => Math.round(x * 1000) / 1000;
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    p50: round(at(0.5)),
    p90: round(at(0.9)),
    p99: round(at(0.99)),
    max: round(sorted[sorted.length - 1]),
    mean: round(sum / sorted.length),
  };
}

async function run(seconds, rate, connections) {
  const phase = makePhase(rate, connections);
  const options = {
    url,
    connections,
    pipelining: 1,
    duration: seconds,
    timeout,
    setupClient: phase.setupClient,
    requests: [
      {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body,
        setupRequest: (request) => {
          request.headers = { ...request.headers, "x-github-delivery": randomUUID() };
          return request;
        },
      },
    ],
  };
  if (rate > 0 && pacing === "autocannon") options.overallRate = rate;

  const cpuBefore = process.cpuUsage();
  const result = await autocannon(options);
  const cpu = process.cpuUsage(cpuBefore);
  const { stats } = phase;
  const ok = Object.entries(stats.statusCounts)
    .filter(([code]) => code >= 200 && code < 300)
    .reduce((n, [, count]) => n + count, 0);
  const elapsed = result.duration; // measured by autocannon, in s
  return {
    tool: `autocannon ${autocannonVersion}`,
    pacing: rate > 0 ? pacing : "none",
    target_rate: rate,
    connections: result.connections,
    duration_s: elapsed,
    sent: stats.sent,
    responses: stats.responses,
    ok_2xx: ok,
    non_2xx: stats.responses - ok,
    status_counts: stats.statusCounts,
    errors: result.errors,
    timeouts: result.timeouts,
    achieved_rate: Math.round((stats.responses / elapsed) * 10) / 10,
    ok_rate: Math.round((ok / elapsed) * 10) / 10,
    latency_ms: percentiles(stats.serviceLatencies),
    schedule_latency_ms: percentiles(stats.scheduleLatencies),
    max_send_lag_ms: Math.round(stats.maxSendLag * 1000) / 1000,
    loadgen_cpu_s: Math.round(((cpu.user + cpu.system) / 1e6) * 1000) / 1000,
  };
}

async function nextStdinLine() {
  process.stdin.setEncoding("utf8");
  let buffered = "";
  for await (const chunk of process.stdin) {
    buffered += chunk;
    if (buffered.includes("\n")) return buffered.split("\n")[0];
  }
  return null;
}

let warm = null;
if (warmup > 0) {
  // Same process, same code paths, fresh connections: warms the JIT here and the server there.
  warm = await run(warmup, warmupRate, rate > 0 ? connections : Math.min(connections, 8));
}
if (handshake) {
  // The caller takes its "before" readings now, then answers with one line.
  process.stdout.write(JSON.stringify({ phase: "ready", warmup: warm }) + "\n");
  const line = await nextStdinLine();
  if (line === null || line.trim() !== "go") process.exit(3);
}
const out = await run(duration, rate, connections);
out.warmup = warm;
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
