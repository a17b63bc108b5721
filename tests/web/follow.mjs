// Opens a running deployment's page in headless Chromium and checks that its log grows
// without a reload (the page's follower appends lines), then that the page ends showing
// the final status. Prints one JSON line. Usage: node follow.mjs URL TOKEN DEPLOYMENT_ID
import { createRequire } from "node:module";

const { chromium } = createRequire(new URL("../node/package.json", import.meta.url))("playwright-core");
const [url, token, deployment] = process.argv.slice(2);
const problems = [];
const seen = {};
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (err) => problems.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => { if (msg.type() === "error") problems.push(`console: ${msg.text()}`); });
  await page.goto(url + "/");
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(url + "/");
  await page.goto(`${url}/deployments/${deployment}`);
  seen.activeAtStart = await page.locator("#following").count() === 1;
  seen.logAtStart = await page.locator("#log").innerText();
  await page.evaluate(() => { window.__notReloaded = true; });
  // Resolves only in the page as first loaded: the line was appended without a reload.
  await page.waitForFunction(
    () => window.__notReloaded === true
      && document.getElementById("log").innerText.includes("slow install done 42"),
    null, { timeout: 120000 });
  seen.appendedWithoutReload = true;
  // The page reloads itself once the deployment ends: a wait may see its context go.
  const deadline = Date.now() + 120000;
  for (;;) {
    try {
      await page.waitForFunction(
        () => !document.getElementById("following") && document.getElementById("status").innerText.trim() === "deployed",
        null, { timeout: Math.max(1000, deadline - Date.now()) });
      break;
    } catch (err) {
      if (!String(err).includes("Execution context was destroyed") || Date.now() > deadline) throw err;
      await page.waitForLoadState();
    }
  }
  seen.finalLog = await page.locator("#log").innerText();
} catch (err) {
  problems.push(`script: ${err && err.stack ? err.stack : err}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ seen, problems }));
